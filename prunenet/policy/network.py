"""PruneNet's policy network and its safetensors file.

Paper parametrization (§3; reference ``SparsityPredictor``): a Linear ``A, b`` from the state
width to the FFN width ``m`` and a learned row vector ``rho``; keep-probabilities are
``alpha = sigmoid((S A^T + 1 b^T) rho)`` for a layer's state ``S`` (one row per neuron), and
actions are drawn through a Gumbel-sigmoid. There is no nonlinearity between the two factors,
so ``alpha = sigmoid(S (A^T rho) + b^T rho)``: :meth:`keep_logits` computes exactly that in
O(m*d) instead of forming the m x m product (:meth:`paper_keep_logits`, kept for tests).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prunenet.errors import PolicyMismatch

__all__ = ["PolicyNetwork", "POLICY_FILE", "save_policy", "load_policy", "gumbel_sigmoid", "policy_fingerprint"]

POLICY_FILE = "prunenet-policy.safetensors"


class PolicyNetwork(nn.Module):
    """One policy for all layers of a model: scores the ``m`` rows of a layer's state matrix."""

    def __init__(self, state_dim: int, width: int) -> None:
        super().__init__()
        self.state_dim, self.width = state_dim, width
        self.proj = nn.Linear(state_dim, width)
        self.rho = nn.Parameter(torch.rand(width, 1))

    def keep_logits(self, S: torch.Tensor) -> torch.Tensor:
        """Logit of the keep-probability of each row of ``S`` (m x state_dim)."""
        v = self.proj.weight.T @ self.rho  # (state_dim, 1) = A^T rho
        c = self.proj.bias @ self.rho  # (1,) = b^T rho
        return (S @ v).squeeze(-1) + c

    def paper_keep_logits(self, S: torch.Tensor) -> torch.Tensor:
        """The same function evaluated as published: (S A^T + 1 b^T) rho, an m x m product."""
        return (self.proj(S) @ self.rho).squeeze(-1)

    def forward(self, S: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.keep_logits(S))


def gumbel_sigmoid(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Binary-Concrete relaxation at temperature 1: sigmoid(logit(u) + logit(alpha))."""
    u = u.clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid(torch.log(u) - torch.log1p(-u) + logits)


def policy_fingerprint(policy: PolicyNetwork) -> str:
    h = hashlib.sha256()
    for name, t in sorted(policy.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def save_policy(policy: PolicyNetwork, path: Path, metadata: dict[str, Any]) -> str:
    """Write the policy (safetensors, JSON metadata); returns its fingerprint."""
    fp = policy_fingerprint(policy)
    meta = {"prunenet": json.dumps({**metadata, "state_dim": policy.state_dim, "width": policy.width, "fingerprint": fp})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(tensors, str(path), metadata=meta)
    return fp


def load_policy(path: Path) -> tuple[PolicyNetwork, dict[str, Any]]:
    """Read a policy file; a corrupt or foreign file is a :class:`PolicyMismatch`."""
    path = Path(path)
    if not path.is_file():
        raise PolicyMismatch(f"--policy {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["prunenet"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        policy = PolicyNetwork(int(meta["state_dim"]), int(meta["width"]))
        policy.load_state_dict(tensors)
    except PolicyMismatch:
        raise
    except Exception as exc:
        raise PolicyMismatch(f"--policy {path}: not a readable PruneNet policy ({exc.__class__.__name__})") from None
    return policy, meta
