# The LPAF workflow lives in workflow/Snakefile; see workflow/README.md.
# The `include:` directive, written as the call it stands for: snakefmt cannot parse an `include:` with a
# keyword argument. overwrite_default_target: its `rule all` stays the default target from the repo root.
workflow.include("workflow/Snakefile", overwrite_default_target=True)
