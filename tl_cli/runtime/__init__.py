"""Runtime helpers under every stage: atomic writes, device choice, torch.distributed, OOM fallbacks,
progress reporting. Imports nothing else from tl_cli but `errors`."""
