# The LPAF workflow lives in workflow/Snakefile; see workflow/README.md.
# overwrite_default_target: its `rule all` stays the default target when run from the repo root.
include: "workflow/Snakefile", overwrite_default_target=True
