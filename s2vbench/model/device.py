"""The one check of a device named by a caller: "cpu", or an accelerator this process has.

torch and safetensors find a device this process lacks late and obscurely (safetensors' "device banana is
invalid", a pin-memory RuntimeError for "cuda" on a machine without one, "Torch not compiled with CUDA enabled"),
after the work it was for has begun; :func:`check_device` finds it first and says what to pass instead.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device this process does not have, named with the devices it has and what to pass instead."""


def accelerator_here() -> tuple[str | None, int]:
    """(this process's accelerator type, e.g. "cuda", and how many it sees), or (None, 0) without one."""
    if not torch.accelerator.is_available():
        return None, 0
    return torch.accelerator.current_accelerator().type, torch.accelerator.device_count()


def check_device(device: str | torch.device, what: str = "device", *, error: type[Exception] = DeviceError,
                 fix: str | None = None, role: str = "compute on", current: str | None = None) -> torch.device:
    """``device`` as a :class:`torch.device` if this process has it: "cpu", or its accelerator ("cuda", or
    "cuda:i" for a GPU it sees). Otherwise ``error`` naming ``what`` and the device, the devices here and
    ``fix`` (default: pass the accelerator or "cpu"); ``role`` says what the device was wanted for.

    ``current`` names what takes the device type alone and so runs on this process's current GPU (the device
    mesh and FSDP do): a GPU index must then be that one."""
    kind, count = accelerator_here()
    here = ", ".join(["cpu"] + [f"{kind}:{i}" for i in range(count)])
    use = fix if fix is not None else (f'Pass "{kind}" or "cpu"' if kind else 'Pass "cpu"')

    def refuse(why: str, fix: str = use) -> Exception:
        return error(f"{what} {device!r} {why}; devices here: {here}. {fix}")

    try:
        parsed = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError):
        raise refuse("is not a device name torch knows") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type != kind:
        if hasattr(getattr(torch, parsed.type, None), "is_available"):
            raise refuse(f"is not available: torch.{parsed.type}.is_available() is False (no such device here, or a "
                         f"torch built without {parsed.type} support)",
                         f"{use}, or run where torch.{parsed.type}.is_available() is True")
        raise refuse(f"is not a device this process can {role}")
    if parsed.index is not None:
        if parsed.index >= count:
            raise refuse(f"does not exist: this process sees {count} {kind} device(s)",
                         f"{use}; CUDA_VISIBLE_DEVICES (or the launcher) decides which GPUs a process sees")
        active = torch.get_device_module(kind).current_device() if current is not None else None
        if active is not None and parsed.index != active:
            raise refuse(f"is not this process's current {kind} device, {kind}:{active}, which {current} use",
                         f"Call torch.{kind}.set_device({parsed.index}) first, or pass \"{kind}\"")
    return parsed


__all__ = ["DeviceError", "accelerator_here", "check_device"]
