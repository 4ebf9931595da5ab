"""Golden tests on the index tables of the published SW-T checkpoint (operator spec, section 3).

The reference regenerates its tables from `torch.manual_seed(123)` at every construction and never saves
them, so the published weights are only usable with the numbers that torch 1.10.0 drew when it trained
them. Torch 1.10.0, 1.13.1, 2.0.1, 2.6.0, 2.7.0, 2.10.0, 2.12.1, 2.13.0 and 2.14.1 were found to draw the
same numbers for SW-T (torch changed CPU `randperm` only for n >= 214,748,364 in 2.6 and `randint` only
for ranges >= 2^28 in 2.7). Two pins catch a torch that draws differently, or a change in swtasks:

1. the raw draws, made here with plain torch calls (no swtasks code), against their SHA-256;
2. the tables that swtasks stores as buffers in every layer of `shiftwise_tiny`, against tables derived
   here from those raw draws by the spec's rules, and against their own SHA-256.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

# SW-T per stage: channels, big kernel, small kernels per rep channel nk, rep channels R (k=3, ghost 0.23)
SW_T_STAGES = ((80, 51, 17, 60), (160, 49, 17, 122), (320, 47, 16, 246), (640, 13, 5, 492))
N_REP = 4
SEED = 123
RAW_DRAWS_SHA256 = "dced9564d024364a6751fd02b69b9690144f041b83c03ab90df199c3ae2b11ef"
FIRST_DRAW = [15, 14, 1, 0, 4, 7, 16, 2, 13, 11, 3, 12, 8, 5, 10, 6, 9]
# rep_idx, ghost_idx, slot_h, slot_v, ident of stages 1-4, in that order, int64 little-endian
STORED_TABLES_SHA256 = "2dce4043dd80b24c51ff5566f95560da0ce653328637952070b95209cbf123b3"


def raw_draws(nk: int, rep: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The reference's draws for one stage, with the global generator as the reference uses it:
    after `manual_seed(123)`, 2 x N_REP x R `randperm(nk)` (horizontal groups, then vertical), then
    N_REP `randint(0, nk, [R])`."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        perms = [torch.randperm(nk) for _ in range(2 * N_REP * rep)]
        idents = [torch.randint(0, nk, [rep]) for _ in range(N_REP)]
    finally:
        torch.random.set_rng_state(state)
    return perms, idents


def le_int64(values) -> bytes:
    return np.asarray(values, dtype="<i8").tobytes()


def test_torch_draws_the_numbers_that_trained_the_published_checkpoint():
    digest = hashlib.sha256()
    for _, _, nk, rep in SW_T_STAGES:
        perms, idents = raw_draws(nk, rep)
        for t in perms + idents:
            assert t.dtype == torch.int64
            digest.update(le_int64(t.numpy()))
        if nk == 17 and rep == 60:
            assert perms[0].tolist() == FIRST_DRAW
    assert digest.hexdigest() == RAW_DRAWS_SHA256, (
        f"torch {torch.__version__} draws different numbers after manual_seed({SEED}) than the torch that "
        "trained the published SW-T checkpoint: its index tables would no longer match its weights"
    )


def expected_tables(channels: int, nk: int, rep: int) -> dict[str, np.ndarray]:
    """The spec's tables (section 3), derived from the raw draws without swtasks code."""
    perms, idents = raw_draws(nk, rep)
    slots = np.empty((2, N_REP, rep * nk), dtype=np.int64)
    for n, perm in enumerate(perms):  # group-major: horizontal groups 0..3, then vertical 0..3
        direction, g, c = n // (N_REP * rep), (n // rep) % N_REP, n % rep
        for slot, j in enumerate(perm.tolist()):  # the draw puts small kernel j of channel c at `slot`
            slots[direction, g, c * nk + j] = slot
    ident = np.stack([t.numpy() + np.arange(rep) * nk for t in idents])
    legacy = np.random.RandomState(SEED)  # the reference: np.random.seed(123); np.random.choice(...)
    ghost = np.sort(legacy.choice(channels, channels - rep, replace=False))
    rep_idx = np.setdiff1d(np.arange(channels), ghost)
    return dict(rep_idx=rep_idx, ghost_idx=ghost, slot_h=slots[0], slot_v=slots[1], ident=ident)


@pytest.fixture(scope="module")
def sw_t_layers():
    import swtasks
    from swtasks.layers import ShiftWiseConv2d

    model = swtasks.create_model("shiftwise_tiny")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, ShiftWiseConv2d)]
    assert len(layers) == 3 + 3 + 18 + 3
    return layers


def test_swtasks_tables_of_shiftwise_tiny_are_those_of_the_raw_draws(sw_t_layers):
    digest = hashlib.sha256()
    for stage, (channels, kernel, nk, rep) in enumerate(SW_T_STAGES):
        want = expected_tables(channels, nk, rep)
        layers = [(n, m) for n, m in sw_t_layers if n.startswith(f"stages.{stage}.")]
        assert layers, stage
        for name, layer in layers:
            assert (layer.channels, layer.kernel_size, layer.n_small, layer.rep_channels) == (
                channels,
                kernel,
                nk,
                rep,
            ), name
            for key, value in want.items():
                got = getattr(layer, key)
                assert got.dtype == torch.int64, (name, key)
                np.testing.assert_array_equal(got.numpy(), value, err_msg=f"{name}.{key}")
        first = layers[0][1]
        for key in ("rep_idx", "ghost_idx", "slot_h", "slot_v", "ident"):
            digest.update(le_int64(getattr(first, key).numpy()))
    assert digest.hexdigest() == STORED_TABLES_SHA256
