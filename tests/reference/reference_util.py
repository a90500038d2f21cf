"""What the reference scripts share: random weights away from their init, and float64 golden values
computed from exactly what the float32 files store."""
import torch


def rnd(*shape):
    """a float64 tensor of float32 values"""
    return torch.randn(*shape, dtype=torch.float32).double()


def randomise(module):
    """every parameter away from its init: norms' weights off 1, biases off 0, matrices ~ 1/sqrt(fan_in)"""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)


def f32(d):
    """a dict of tensors as safetensors stores them: floats in float32, contiguous"""
    return {k: (v.float() if v.is_floating_point() else v).detach().contiguous() for k, v in d.items()}
