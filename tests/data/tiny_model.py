"""A tiny nn.Module for tune-model tests: two linear layers, one of them used twice.

Traced on x of shape (2, 2, 16), its tasks are linear m=4,n=32,k=16 (twice per forward pass)
and linear m=4,n=16,k=32 (once); the ReLU stays with torch.
"""
import torch


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(16, 32, bias=False)
        self.down = torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(torch.relu(self.up(x)))
        return self.up(y)


def build() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return Tiny().eval(), (torch.randn(2, 2, 16),)
