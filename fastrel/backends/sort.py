"""The ``sort`` backend: exact global relation without a pair loop, where one activation is the identity.

Two readings of the relation module are separable per channel (docs/sort_path.md):

- outer = identity, inner ∈ {relu, abs, leaky_relu, identity}: the projection leaves the mean,
  g_i = W_r D_i + β_r with D_i = mean_j m_j δ(a_i − b_j), a 1-D problem per hidden channel;
- inner = identity, outer ∈ {relu, leaky_relu, identity}: z_ij = u_i − v_j + β_r with u = a W_rᵀ,
  v = b W_rᵀ, so g_i = mean_j m_j σ(u_i + β_r − v_j), a 1-D problem per relation channel.

Each 1-D problem, mean_j m_j φ(q_i − s_j) for a piecewise-linear φ, follows from the keys sorted
once with prefix sums, forward and backward. On the CPU it runs in C++ (fastrel._C) when that is
built and the inputs are finite; the torch-ops implementation (sort, cumsum, searchsorted) runs
everywhere else, CUDA included, handles ±inf and NaN exactly, and is deterministic (stable sorts,
gathers, scans; no atomics).
"""

from __future__ import annotations

from types import ModuleType

import torch

from fastrel import activations, dtypes
from fastrel.backends import native as _native
from fastrel.backends.base import Backend, Preference

Tensor = torch.Tensor

#: False forces the torch-ops implementation even where the C++ one is built (tests use it).
PREFER_NATIVE = True

#: Prefix sums run in float64 whatever the input dtype: a float32 scan over thousands of keys
#: loses bits that the reference's pairwise sums keep (docs/sort_path.md, "Precision").
SUM_DTYPE = torch.float64

#: φ(x) = all·x + above·relu(x) + below·relu(−x) for the activations a 1-D problem can have; so
#: φ'(x) = all + above·[x > 0] − below·[x < 0], which is each activation's kink convention at 0.
SPLITS = {
    "relu": (0.0, 1.0, 0.0),
    "leaky_relu": (activations.LEAKY_SLOPE, 1.0 - activations.LEAKY_SLOPE, 0.0),
    "abs": (0.0, 1.0, 1.0),
    "identity": (1.0, 0.0, 0.0),
}

#: The (inner, outer) pairs the backend computes exactly.
PAIRS = (
    ("relu", "identity"),
    ("abs", "identity"),
    ("leaky_relu", "identity"),
    ("identity", "identity"),
    ("identity", "relu"),
    ("identity", "leaky_relu"),
)


def native() -> ModuleType | None:
    """fastrel._C when it is built with the sort kernels, else None."""
    try:
        extension = _native.module()
    except ImportError:
        return None
    return extension if hasattr(extension, "global_relation_sort_forward_cpu") else None


def _use_native(q: Tensor, s: Tensor) -> bool:
    """The C++ path takes finite CPU inputs; ±inf and NaN go to the torch ops, which handle them exactly."""
    return (
        PREFER_NATIVE
        and q.device.type == "cpu"
        and native() is not None
        and bool(torch.isfinite(q).all())
        and bool(torch.isfinite(s).all())
    )


def _key_counts(s: Tensor, key_mask: Tensor | None) -> Tensor:
    """Number of valid keys per batch element, (B,) int64."""
    if key_mask is None:
        return torch.full((s.shape[0],), s.shape[1], dtype=torch.int64, device=s.device)
    return key_mask.sum(dim=1)


# --------------------------------------------------------------------------------------------
# The 1-D problem Φ_i = mean_j m_j φ(q_i − s_j) per channel and its backward, as torch ops.
# --------------------------------------------------------------------------------------------


class _SortedKeys:
    """One batch's keys per channel: the finite valid ones sorted (the rest last, as +inf) with
    prefix sums around their mean, and the counts of valid +inf, −inf and NaN keys."""

    def __init__(self, s: Tensor, key_mask: Tensor | None) -> None:
        B, M, _ = s.shape
        keys = s.transpose(1, 2).to(dtypes.accumulation(s.dtype))  # (B, C, M), exact conversion
        valid = torch.ones_like(keys, dtype=torch.bool) if key_mask is None else key_mask[:, None, :].expand_as(keys)
        finite = valid & torch.isfinite(keys)
        self.keys, self.valid = keys, valid
        self.count = valid.sum(dim=-1, keepdim=True)  # (B, C, 1), equal over C
        self.n = self.count.clamp(min=1)
        self.finite = finite.sum(dim=-1, keepdim=True)  # (B, C, 1)
        self.special = {  # value → how many valid keys have it, (B, C, 1)
            float("inf"): (valid & (keys == float("inf"))).sum(dim=-1, keepdim=True),
            float("-inf"): (valid & (keys == float("-inf"))).sum(dim=-1, keepdim=True),
            float("nan"): (valid & torch.isnan(keys)).sum(dim=-1, keepdim=True),
        }
        self.nans = self.special[next(v for v in self.special if v != v)]  # NaN ≠ NaN: no lookup by value
        self.sorted = torch.sort(keys.masked_fill(~finite, float("inf")), dim=-1, stable=True).values.contiguous()
        in_prefix = torch.arange(M, device=s.device) < self.finite  # (B, C, M)
        wide = torch.where(in_prefix, self.sorted.to(SUM_DTYPE), 0.0)
        self.centre = wide.sum(dim=-1, keepdim=True) / self.finite.clamp(min=1)  # (B, C, 1)
        centred = torch.where(in_prefix, wide - self.centre, 0.0)
        self.prefix = torch.nn.functional.pad(torch.cumsum(centred, dim=-1), (1, 0))  # (B, C, M + 1)

    def relate(self, queries: Tensor, act: str) -> tuple[Tensor, Tensor]:
        """Σ_j m_j φ(q − s_j) and its derivative in q, for queries (B, C, N), in SUM_DTYPE."""
        every, above, below = SPLITS[act]
        k, kf = self.finite, self.finite.expand_as(queries)
        lower = torch.minimum(torch.searchsorted(self.sorted, queries, side="left"), k)  # finite keys < q
        upper = torch.minimum(torch.searchsorted(self.sorted, queries, side="right"), k)  # finite keys ≤ q
        q = queries.to(SUM_DTYPE) - self.centre
        last = self.prefix.gather(-1, kf)
        total = torch.zeros_like(q)
        if above:
            total = total + above * (lower * q - self.prefix.gather(-1, lower))
        if every:
            total = total + every * (k * q - last)
        if below:
            total = total + below * ((last - self.prefix.gather(-1, upper)) - (k - upper) * q)
        # Infinite and NaN queries meet every finite key at ±inf or NaN; non-finite keys meet every
        # query there too. Each such group adds count · φ(q − value), and nothing when it is empty
        # (a select, never 0 · inf).
        wide = queries.to(SUM_DTYPE)
        phi = lambda x: activations.activate(x, act)  # noqa: E731
        total = torch.where(torch.isfinite(wide), total, torch.where(k > 0, k * phi(wide), 0.0))
        for value, count in self.special.items():
            total = total + torch.where(count > 0, count * phi(wide - value), 0.0)
        smaller = lower + self.special[float("-inf")] * (wide > float("-inf"))  # keys < q
        larger = (k - upper) + self.special[float("inf")] * (wide < float("inf"))  # keys > q
        slope = every * self.count.to(SUM_DTYPE) + above * smaller.to(SUM_DTYPE) - below * larger.to(SUM_DTYPE)
        # A NaN key is neither smaller nor larger than q: it has added `every`; φ'(NaN) is autograd's.
        slope = slope + self.nans * (_slope_at_nan(act) - every)
        return total, slope


def _slope_at_nan(act: str) -> float:
    """φ'(NaN) as autograd takes it (docs/math.md): 1 for relu and identity, the slope for leaky_relu, 0 for abs."""
    return float(activations.derivative(torch.tensor(float("nan"), dtype=SUM_DTYPE), act))


def _torch_mean_activation(q: Tensor, s: Tensor, key_mask: Tensor | None, act: str) -> Tensor:
    """Φ (B, N, C) = mean_j m_j φ(q_i − s_j) in dtypes.accumulation(q.dtype)."""
    keys = _SortedKeys(s, key_mask)
    total, _ = keys.relate(q.transpose(1, 2).to(dtypes.accumulation(q.dtype)).contiguous(), act)
    return (total / keys.n).to(dtypes.accumulation(q.dtype)).transpose(1, 2).contiguous()


def _torch_mean_activation_backward(
    grad_mean: Tensor, q: Tensor, s: Tensor, key_mask: Tensor | None, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(Φ, dL/dq, dL/ds) given dL/dΦ; all (B, ·, C) in dtypes.accumulation(q.dtype)."""
    dtype = dtypes.accumulation(q.dtype)
    every, above, below = SPLITS[act]
    keys = _SortedKeys(s, key_mask)
    queries = q.transpose(1, 2).to(dtype).contiguous()  # (B, C, N)
    total, slope = keys.relate(queries, act)
    grad = grad_mean.transpose(1, 2).to(SUM_DTYPE) / keys.n  # (B, C, N), dL/dΣ
    dq = grad * slope
    # ds_j = −(all·Σ_i grad_i + above·Σ_{q_i > s_j} grad_i − below·Σ_{q_i < s_j} grad_i): scan grad
    # in query order and look every key up among the sorted queries.
    sorted_queries, order = torch.sort(queries, dim=-1, stable=True)
    sorted_queries = sorted_queries.contiguous()
    scan = torch.nn.functional.pad(torch.cumsum(grad.gather(-1, order), dim=-1), (1, 0))  # (B, C, N + 1)
    everything = scan[..., -1:]
    lookup = keys.keys.masked_fill(~keys.valid, 0.0).contiguous()
    not_above = scan.gather(-1, torch.searchsorted(sorted_queries, lookup, side="right"))
    ds = above * (not_above - everything) - every * everything
    if below:
        ds = ds + below * scan.gather(-1, torch.searchsorted(sorted_queries, lookup, side="left"))
    ds = torch.where(torch.isnan(lookup), -_slope_at_nan(act) * everything, ds)  # φ'(q − NaN) for every q
    ds = torch.where(keys.valid, ds, 0.0)
    mean = (total / keys.n).to(dtype).transpose(1, 2).contiguous()
    return mean, dq.to(dtype).transpose(1, 2).contiguous(), ds.to(dtype).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# The 1-D problem by the fastest implementation available.
# --------------------------------------------------------------------------------------------


def _without_excluded(s: Tensor, key_mask: Tensor | None) -> Tensor:
    """Keys with the excluded ones set to 0: their stored values (NaN, ±inf) never reach a path."""
    return s if key_mask is None else s.masked_fill(~key_mask[:, :, None], 0.0)


def mean_activation(q: Tensor, s: Tensor, key_mask: Tensor | None, act: str) -> Tensor:
    """Φ (B, N, C) = Σ_j m_j φ(q_i − s_j) / max(Σ_j m_j, 1), in dtypes.accumulation(q.dtype)."""
    s = _without_excluded(s, key_mask)
    if _use_native(q, s):
        return native().global_relation_sort_forward_cpu(q, s, key_mask, activations.CODES[act])
    return _torch_mean_activation(q, s, key_mask, act)


def mean_activation_backward(
    grad_mean: Tensor, q: Tensor, s: Tensor, key_mask: Tensor | None, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(Φ, dL/dq, dL/ds) given dL/dΦ (B, N, C), in dtypes.accumulation(q.dtype)."""
    s = _without_excluded(s, key_mask)
    if _use_native(q, s):
        mean, dq, ds = native().global_relation_sort_backward_cpu(grad_mean, q, s, key_mask, activations.CODES[act])
        return mean, dq, ds
    return _torch_mean_activation_backward(grad_mean, q, s, key_mask, act)


# --------------------------------------------------------------------------------------------
# The backend: which side of the projection the 1-D problems are on.
# --------------------------------------------------------------------------------------------


def _has_key(b: Tensor, key_mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(B, 1, 1) 1 where the batch element has a valid key, else 0: where the bias applies."""
    return (_key_counts(b, key_mask) > 0).to(dtype)[:, None, None]


def _relation_side(inner: str, outer: str) -> bool:
    """True when the 1-D problems are per relation channel (inner = identity, outer ≠ identity)."""
    return inner == "identity" and outer != "identity"


def _projected(a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """q = a W_rᵀ + β_r and s = b W_rᵀ, so that z_ij = q_i − s_j, in dtypes.accumulation(a.dtype)."""
    dtype = dtypes.accumulation(a.dtype)
    w = weight.to(dtype)
    q = torch.matmul(a.to(dtype), w.t())
    if bias is not None:
        q = q + bias.to(dtype)
    return q.contiguous(), torch.matmul(b.to(dtype), w.t()).contiguous()


def forward(a, b, weight, bias, key_mask, inner, outer):
    if _relation_side(inner, outer):
        q, s = _projected(a, b, weight, bias)
        return mean_activation(q, s, key_mask, outer).to(a.dtype)
    dtype = dtypes.accumulation(a.dtype)
    g = torch.matmul(mean_activation(a, b, key_mask, inner), weight.to(dtype).t())  # (B, N, R)
    if bias is not None:
        g = g + bias.to(dtype) * _has_key(b, key_mask, dtype)
    return g.to(a.dtype)


def backward(grad, a, b, weight, bias, key_mask, inner, outer, deterministic):
    dtype = dtypes.accumulation(a.dtype)
    grad = grad.to(dtype)
    if _relation_side(inner, outer):
        q, s = _projected(a, b, weight, bias)
        _, dq, ds = mean_activation_backward(grad.contiguous(), q, s, key_mask, outer)
        w = weight.to(dtype)
        da, db = torch.matmul(dq, w), torch.matmul(ds, w)
        dweight = torch.matmul(dq.flatten(0, 1).t(), a.to(dtype).flatten(0, 1))
        dweight = dweight + torch.matmul(ds.flatten(0, 1).t(), b.to(dtype).flatten(0, 1))
        dbias = dq.sum(dim=(0, 1))
    else:
        grad_mean = torch.matmul(grad, weight.to(dtype))  # (B, N, H): dL/dD = W_rᵀ dG
        mean, da, db = mean_activation_backward(grad_mean, a, b, key_mask, inner)
        dweight = torch.matmul(grad.flatten(0, 1).t(), mean.flatten(0, 1))  # (R, H)
        dbias = (grad * _has_key(b, key_mask, dtype)).sum(dim=(0, 1))
    return da.to(a.dtype), db.to(b.dtype), dweight.to(weight.dtype), dbias.to(weight.dtype)


BACKEND = Backend(
    name="sort",
    summary="exact O((N+M) log M) path where inner or outer is the identity (C++ on CPU, else torch ops)",
    forward=forward,
    backward=backward,
    inner=("relu", "abs", "leaky_relu", "identity"),
    outer=("identity", "relu", "leaky_relu"),
    pairs=PAIRS,
    deterministic=True,
    preferred=(
        Preference(
            "exact and O((N+M) log M·H) where the pairwise kernels are O(N·M·H·R)",
            devices=("cpu", "cuda"),
        ),
    ),
)
