"""Free memory on a device: what fit_many's chunking and the full-batch training advice
both size themselves by."""

from __future__ import annotations

__all__ = ["available_bytes"]


def available_bytes(device) -> int | None:
    """Free memory on ``device`` (a torch.device): CUDA's free memory, or the kernel's
    MemAvailable on the CPU; None where it cannot be read."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
