# How a training job starts: one process, or DDP over compute.gpus GPUs through torchrun.
# lpaf keeps --batch-size the global batch under torchrun (split over the processes), so an
# artifact's settings and hash do not depend on the GPU count.


def train_launcher():
    """The command prefix of the training rules (finetune, prune, retrain).

    With device cuda and gpus > 1: torchrun --standalone (a free rendezvous port per job, so jobs
    sharing a node never collide) with one process per GPU, running lpaf's CLI module with the same
    Python lpaf_command() uses; otherwise lpaf_command() itself.
    """
    n = gpus()
    if n <= 1:
        return lpaf_command()
    python = lpaf_python()
    launcher = "torchrun" if python == "python" else f"{python} -m torch.distributed.run"
    return f"{launcher} --standalone --nproc_per_node {n} -m lpaf.cli"
