"""The ring in torch tensors, shared by the two torch-based folders (Keras 3
on its torch backend, ``frameworks/keras/capture/torch.py``, and plain
PyTorch, ``frameworks/torch/capture/hooks.py``): a ring's device tensors
allocated from its :class:`tb_bnstats.capture.ring.RingFormat`, read back in
one read each, and the :class:`tb_bnstats.capture.ring.Ops` that pack a row
with torch ops. Imports torch when used."""

from typing import Any

import numpy as np

from tb_bnstats.capture import ring


def device_tensors(format: ring.RingFormat, steps: int, device: Any) -> dict[str, Any]:
    """Zeroed tensors for each of ``format``'s device arrays, ``steps`` rows, on ``device``."""
    import torch

    return {array.name: torch.zeros(format.shape(array.name, steps), dtype=getattr(torch, array.dtype),
                                    device=device)
            for array in format.device_arrays()}


def read(format: ring.RingFormat, device: dict[str, Any], host: dict[str, np.ndarray]) -> Any:
    """The ring's rows: each device tensor read once, with the host arrays."""
    return format.rows({**{name: t.cpu().numpy() for name, t in device.items()}, **host})


class TorchOps:
    """:class:`tb_bnstats.capture.ring.Ops` in torch, on the ring's device:
    0-d tensors are one ``torch.stack``, other parts one ``torch.cat``."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def vector(self, parts: list[Any], dtype: str, out: Any = None) -> Any:
        import torch

        torch_dtype = getattr(torch, dtype)
        if parts and all(isinstance(p, torch.Tensor) and p.dim() == 0 for p in parts):
            stacked = [p.detach().to(self.device, torch_dtype) for p in parts]
            return torch.stack(stacked) if out is None else torch.stack(stacked, out=out)
        flat = [torch.as_tensor(p, device=self.device).detach().reshape([-1]).to(torch_dtype) for p in parts]
        if not flat:
            return out if out is not None else torch.zeros([0], dtype=torch_dtype, device=self.device)
        return torch.cat(flat) if out is None else torch.cat(flat, out=out)

    def bitcast_pairs(self, vector: Any) -> Any:
        import torch

        return vector.view(torch.float64)
