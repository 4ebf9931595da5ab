"""Per-small-kernel dynamic sparsity (swtasks.sparse) on small ShiftWiseConv2d stacks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from swtasks.layers import ShiftWiseConv2d
from swtasks.sparse import KernelSparsity, masks_from_weights, snip_scores


def small_net(seed: int = 0, channels: int = 32) -> nn.Sequential:
    """Three SW layers (R=24 rep channels; 5, 5 and 3 small kernels per channel) and a linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        ShiftWiseConv2d(channels, 13),
        nn.GELU(),
        ShiftWiseConv2d(channels, 15),
        nn.GELU(),
        ShiftWiseConv2d(channels, 9),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 5),
    )


def batch(seed: int = 1, n: int = 4, channels: int = 32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, 12, 12, generator=g), torch.randint(0, 5, (n,), generator=g)


def sw_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, ShiftWiseConv2d)}


def train(model, sparsity, optimizer, steps, data=None, autocast=False):
    x, y = data or batch()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x.to(next(model.parameters()).dtype)).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sparsity.step(optimizer)


def assert_masked_kernels_zero(model):
    for name, layer in sw_layers(model).items():
        if layer.kernel_mask is None:
            continue
        off = layer.kernel_mask == 0
        assert off.any(), name
        assert torch.count_nonzero(layer.weight.detach()[off]) == 0, f"{name}: masked kernels are not zero"


# ------------------------------------------------------------------------------------------ init


def test_snip_init_reaches_target_density_with_shared_path_masks():
    model = small_net()
    sp = KernelSparsity(model, sparsity=0.3, total_steps=1000)
    densities = sp.init_masks(batch(), F.cross_entropy)
    # 3 layers x 2 paths x 120/120/72 kernels: per-layer rounding costs at most a kernel per layer
    assert abs(sp.density() - 0.7) <= 3 / 624
    assert set(densities) == set(sw_layers(model))
    for name, mask in sp.masks.items():
        assert mask.shape == sw_layers(model)[name].weight.shape[:2]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(mask[0], mask[1]), "the first path's mask is copied to the other paths"
    assert_masked_kernels_zero(model)


def test_snip_scores_are_per_kernel_and_leave_the_model_untouched():
    model = small_net()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = snip_scores(model, batch(), F.cross_entropy)
    for name, layer in sw_layers(model).items():
        assert scores[name].shape == layer.weight.shape[:2]
        assert (scores[name] >= 0).all() and scores[name].sum() > 0
        assert layer.weight.grad is None
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BN running stats must be restored"


def test_snip_densities_follow_a_global_threshold():
    model = small_net()
    sp = KernelSparsity(model, sparsity=0.3, total_steps=10)
    scores = snip_scores(model, batch(), F.cross_entropy)
    sp.init_masks(batch(), F.cross_entropy)
    flat = torch.cat([s.flatten() for s in scores.values()])
    threshold = torch.topk(flat, round(0.7 * flat.numel())).values[-1]
    for name, layer in sw_layers(model).items():
        expected = (scores[name] >= threshold).float().mean().item()
        n = layer.weight.shape[1]
        got = 1.0 if layer.kernel_mask is None else layer.kernel_mask[0].mean().item()
        assert abs(got - expected) <= 0.5 / n + 1e-6 or (expected >= 0.99 and got == 1.0)


def test_layers_above_dense_threshold_stay_dense():
    model = small_net()
    sp = KernelSparsity(model, sparsity=0.005, total_steps=10)  # uniform density 0.995 >= 0.99
    sp.init_masks()
    assert sp.masks == {} and sp.density() == 1.0
    assert all(m.kernel_mask is None for m in sw_layers(model).values())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, sp, opt, steps=2)  # nothing to mask, nothing fails
    assert sp.steps == 2 and sp.density() == 1.0


# ------------------------------------------------------------------------------------------ prune / regrow


def test_prune_and_regrow_keeps_counts_prunes_smallest_and_regrows_at_zero():
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = KernelSparsity(model, sparsity=0.3, total_steps=100)
    sp.init_masks(batch(), F.cross_entropy, optimizer=opt)
    train(model, sp, opt, steps=3)  # non-zero kernels with different magnitudes
    old = {n: m.clone() > 0.5 for n, m in sp.masks.items()}
    mag = {n: sw_layers(model)[n].weight.detach().abs().sum((2, 3)) for n in old}
    sp.prune_and_regrow(opt, rate=0.2)
    changed = False
    for name, before in old.items():
        layer = sw_layers(model)[name]
        after = layer.kernel_mask > 0.5
        assert torch.equal(after.sum(1), before.sum(1)), "prune/regrow keeps the nonzero count of every path"
        changed |= not torch.equal(after, before)
        w_mag = layer.weight.detach().abs().sum((2, 3))
        for p in range(before.shape[0]):
            pruned = before[p] & ~after[p]
            kept = before[p] & after[p] & (w_mag[p] > 0)  # still active and not reset
            assert pruned.sum() + (before[p] & after[p] & (w_mag[p] == 0)).sum() == math.ceil(
                0.2 * before[p].sum()
            )
            if pruned.any() and kept.any():
                assert mag[name][p][pruned].max() <= mag[name][p][kept].min(), "the smallest-L1 kernels go"
            regrown = after[p] & ~before[p]
            assert torch.count_nonzero(layer.weight.detach()[p][regrown]) == 0, "regrown kernels start at 0"
    assert changed
    assert_masked_kernels_zero(model)


def test_update_schedule_rate_and_counters():
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = KernelSparsity(model, total_steps=40, update_interval=4, align_interval=None)
    assert sp.current_prune_rate(0) == pytest.approx(0.3)
    assert sp.current_prune_rate(20) == pytest.approx((0.3 + 0.005) / 2)
    assert sp.current_prune_rate(40) == pytest.approx(0.005)
    assert sp.current_prune_rate(400) == pytest.approx(0.005)
    sp.init_masks(batch(), F.cross_entropy, optimizer=opt)
    counts = {n: m.sum(1).clone() for n, m in sp.masks.items()}
    train(model, sp, opt, steps=9)
    assert sp.steps == 9 and sp.updates == 2
    assert all(torch.equal(sp.masks[n].sum(1), c) for n, c in counts.items())
    assert_masked_kernels_zero(model)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4),
    ],
    ids=["adamw", "adam-amsgrad", "sgd-momentum"],
)
def test_pruned_weights_and_their_optimizer_state_stay_zero(make_opt):
    model = small_net()
    opt = make_opt(model.parameters())
    sp = KernelSparsity(model, sparsity=0.3, total_steps=30, update_interval=3, align_interval=2)
    sp.init_masks(batch(), F.cross_entropy, optimizer=opt)
    train(model, sp, opt, steps=11)  # three prune/regrow updates, the second one aligned
    assert sp.updates == 3
    assert_masked_kernels_zero(model)
    for name, layer in sw_layers(model).items():
        off = layer.kernel_mask == 0
        state = opt.state[layer.weight]
        tensors = [v for v in state.values() if torch.is_tensor(v) and v.shape == layer.weight.shape]
        assert tensors, f"{name}: no optimiser state found"
        for v in tensors:
            assert torch.count_nonzero(v[off]) == 0, f"{name}: optimiser state of pruned kernels is not zero"


def test_optimizer_state_from_before_pruning_is_reset():
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = KernelSparsity(model, total_steps=10, update_interval=None, align_interval=None)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    opt.step()  # dense Adam moments everywhere
    opt.zero_grad()
    sp.init_masks(optimizer=opt)
    for layer in sw_layers(model).values():
        off = layer.kernel_mask == 0
        assert torch.count_nonzero(opt.state[layer.weight]["exp_avg"][off]) == 0
        assert torch.count_nonzero(opt.state[layer.weight]["exp_avg_sq"][off]) == 0
    train(model, sp, opt, steps=3)
    assert_masked_kernels_zero(model)


# ------------------------------------------------------------------------------------------ alignment


def paths_equal(sp) -> bool:
    return all(torch.equal(m[0], m[1]) for m in sp.masks.values())


def test_alignment_comes_at_every_nth_update_not_every_nth_step():
    """The reference aligns inside the prune step of every `sparse_gap`-th update (steps // update_frequency
    % sparse_gap == 0): with updates every 2 steps and alignment every 3rd update, at steps 6 and 12 only
    (an alignment counted in optimiser steps would come at steps 3, 6, 9, 12)."""
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = KernelSparsity(model, total_steps=1000, update_interval=2, align_interval=3)
    sp.init_masks(batch(), F.cross_entropy, optimizer=opt)
    assert paths_equal(sp)  # the first path's mask is copied at init
    equal = []
    for _ in range(12):
        train(model, sp, opt, steps=1)
        equal.append(paths_equal(sp))
    # paths diverge at the first (independent) update and are one again right after each aligned one
    assert equal == [True, False, False, False, False, True, True, False, False, False, False, True]
    assert sp.updates == 6


def test_schedule_of_the_recipe_aligns_at_step_13100():
    sp = KernelSparsity(small_net(), total_steps=300_000, update_interval=100, align_interval=131)
    assert sp.schedule_at(100) == (True, False)
    assert sp.schedule_at(131) == (False, False)
    assert sp.schedule_at(13_000) == (True, False)
    assert sp.schedule_at(13_100) == (True, True)
    assert sp.schedule_at(26_200) == (True, True)
    assert [s for s in range(1, 30_000) if sp.schedule_at(s)[1]] == [13_100, 26_200]
    fixed = KernelSparsity(small_net(), total_steps=10, update_interval=None)
    assert fixed.schedule_at(13_100) == (False, False)


def test_aligned_update_prunes_on_the_path_sum_and_regrows_one_common_set():
    """Inside the prune step: the common mask keeps the best (count - ceil(rate * count)) kernels by
    sum_p |w_p| and regrows ceil(rate * count) kernels at zero in every path (an alignment after the
    update, or instead of it, would keep kernels that carry weights and regrow none)."""
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = KernelSparsity(model, total_steps=1000, update_interval=2, align_interval=3)
    sp.init_masks(batch(), F.cross_entropy, optimizer=opt)
    train(model, sp, opt, steps=5)  # updates 1 and 2 (steps 2 and 4): the paths have diverged
    assert not paths_equal(sp)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    old = {n: m.clone() > 0.5 for n, m in sp.masks.items()}
    summed = {n: (sw_layers(model)[n].weight.detach().abs().sum((2, 3)) * old[n]).sum(0) for n in old}
    rate = sp.current_prune_rate(6)
    sp.step(opt)  # step 6 = update 3: aligned
    assert sp.updates == 3
    for name, before in old.items():
        layer = sw_layers(model)[name]
        mask = layer.kernel_mask > 0.5
        count = int(before[0].sum())
        assert torch.equal(mask[0], mask[1]) and int(mask[0].sum()) == count, name
        n_remove = math.ceil(rate * count)
        w_sum = layer.weight.detach().abs().sum((2, 3)).sum(0)
        regrown = mask[0] & (w_sum == 0)
        kept = mask[0] & (w_sum > 0)
        assert int(regrown.sum()) == n_remove, name
        assert int(kept.sum()) == count - n_remove, name
        assert summed[name][kept].min() >= summed[name][~kept].max(), f"{name}: not the best by sum_p |w_p|"
        for p in range(before.shape[0]):  # a kernel new to a path starts at zero in that path
            fresh = mask[p] & ~before[p]
            assert torch.count_nonzero(layer.weight.detach()[p][fresh]) == 0
    assert_masked_kernels_zero(model)


# ------------------------------------------------------------------------------------------ checkpoints


def test_masks_survive_state_dict_and_model_checkpoint_round_trip(tmp_path):
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = KernelSparsity(model, total_steps=50, update_interval=3, align_interval=2)
    sp.init_masks(batch(), F.cross_entropy, optimizer=opt)
    train(model, sp, opt, steps=4)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "sparsity": sp.state_dict()}, path
    )
    assert any(k.endswith("kernel_mask") for k in model.state_dict()), "masks are in the model checkpoint"

    ckpt = torch.load(path, weights_only=True)
    # 1) model checkpoint alone: the fresh model (no masks yet) loads them into its layers
    fresh = small_net(seed=123)
    fresh.load_state_dict(ckpt["model"])
    for name, layer in sw_layers(fresh).items():
        assert torch.equal(layer.kernel_mask, sw_layers(model)[name].kernel_mask)
    adopted = KernelSparsity(fresh, total_steps=50, update_interval=3, align_interval=2)
    assert adopted.initialized and adopted.density() == sp.density()

    # 2) full resume: masks, counters and generator, so the run continues identically
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(ckpt["optimizer"])
    resumed = KernelSparsity(fresh, total_steps=50, update_interval=3, align_interval=2)
    resumed.load_state_dict(ckpt["sparsity"])
    assert resumed.steps == sp.steps == 4 and resumed.updates == sp.updates == 1
    train(model, sp, opt, steps=5)
    train(fresh, resumed, fresh_opt, steps=5)
    for name in sp.masks:
        assert torch.equal(sp.masks[name], resumed.masks[name])
        torch.testing.assert_close(sw_layers(model)[name].weight, sw_layers(fresh)[name].weight)


def test_load_state_dict_rejects_a_foreign_state():
    model = small_net()
    sp = KernelSparsity(model, total_steps=10)
    sp.init_masks()
    state = sp.state_dict()
    other = KernelSparsity(small_net(channels=16), total_steps=10)
    with pytest.raises(ValueError, match="mis-shaped masks"):
        other.load_state_dict(state)
    state["masks"]["nope"] = state["masks"].pop("0")
    with pytest.raises(ValueError, match="unknown layers"):
        sp.load_state_dict(state)


def test_masks_from_weights_fixes_the_loaded_pattern():
    model = small_net()
    layers = sw_layers(model)
    with torch.no_grad():
        layers["0"].weight[0, :10] = 0
        layers["0"].weight[1, 5:20] = 0
        layers["4"].weight[:, ::3] = 0
    masks = masks_from_weights(model)
    assert set(masks) == {"0", "4"} and layers["2"].kernel_mask is None
    assert masks["0"][0, :10].sum() == 0 and masks["0"][0, 10:].all() and masks["0"][1, 5:20].sum() == 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    x, y = batch()
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert_masked_kernels_zero(model)
    assert torch.count_nonzero(layers["2"].weight) == layers["2"].weight.numel()


# ------------------------------------------------------------------------------------------ precision


def test_mixed_precision_autocast_bf16():
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = KernelSparsity(model, total_steps=20, update_interval=2, align_interval=3)
    sp.init_masks(batch(), F.cross_entropy, optimizer=opt)
    counts = {n: m.sum(1).clone() for n, m in sp.masks.items()}
    train(model, sp, opt, steps=6, autocast=True)
    assert sp.updates == 3
    assert all(torch.equal(sp.masks[n].sum(1), c) for n, c in counts.items())
    assert all(layer.weight.dtype == torch.float32 for layer in sw_layers(model).values())
    assert_masked_kernels_zero(model)


def test_bf16_parameters():
    model = small_net().to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = KernelSparsity(model, total_steps=20, update_interval=2, align_interval=3)
    x, y = batch()
    sp.init_masks((x.bfloat16(), y), lambda out, t: F.cross_entropy(out.float(), t), optimizer=opt)
    train(model, sp, opt, steps=4)
    assert sp.updates == 2
    assert_masked_kernels_zero(model)


# ------------------------------------------------------------------------------------------ errors


def test_bad_arguments():
    with pytest.raises(ValueError, match="sparsity"):
        KernelSparsity(small_net(), sparsity=1.0, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        KernelSparsity(small_net())
    with pytest.raises(ValueError, match="no training-form ShiftWiseConv2d"):
        KernelSparsity(nn.Linear(3, 3), total_steps=10)
    sp = KernelSparsity(small_net(), total_steps=10)
    with pytest.raises(RuntimeError, match="init_masks"):
        sp.step()
    with pytest.raises(ValueError, match="loss_fn"):
        sp.init_masks(batch())
    # settings and models are user errors (one line in the tools: swtasks.errors.UserError, still a
    # ValueError); calling the API in the wrong order is a bug and stays a plain exception
    from swtasks.errors import UserError
    from swtasks.sparse import SparsityError, UnstructuredSparsity

    for make in (lambda: KernelSparsity(small_net(), sparsity=1.0, total_steps=10),
                 lambda: KernelSparsity(nn.Linear(3, 3), total_steps=10),
                 lambda: UnstructuredSparsity(small_net(), total_steps=10, init="random")):
        with pytest.raises(SparsityError) as e:
            make()
        assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    with pytest.raises(ValueError) as e:
        sp.init_masks(batch())
    assert not isinstance(e.value, UserError)


# ------------------------------------------------------------------------------------------ distributed


def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = small_net(seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sp = KernelSparsity(model, total_steps=20, update_interval=2, align_interval=3)
        sp.init_masks(batch(seed=10 + rank), F.cross_entropy, optimizer=opt)  # different data per rank
        init = {n: m.clone() for n, m in sp.masks.items()}
        # different data per rank and no gradient sync: weights diverge, masks must not
        train(model, sp, opt, steps=4, data=batch(seed=20 + rank))
        torch.save({"init": init, "final": sp.state_dict()["masks"]}, f"{out_dir}/rank{rank}.pt")
        # both ranks done before either tears the group down (gloo aborts a peer whose connection closes
        # while it still reads)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_masks_identical_on_every_rank(tmp_path):
    """Two gloo processes with different SNIP batches and unsynchronised (diverging) weights."""
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in ("init", "final"):
        assert r0[key].keys() == r1[key].keys() and r0[key]
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), f"{key} mask of {name} differs between ranks"


@pytest.mark.gpu
def test_cuda_autocast_training_keeps_masks():
    model = small_net().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    sp = KernelSparsity(model, total_steps=20, update_interval=2, align_interval=3)
    x, y = batch()
    sp.init_masks((x.cuda(), y.cuda()), F.cross_entropy, optimizer=opt)
    counts = {n: m.sum(1).clone() for n, m in sp.masks.items()}
    for _ in range(6):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x.cuda()).float(), y.cuda())
        loss.backward()
        opt.step()
        opt.zero_grad()
        sp.step(opt)
    assert sp.updates == 3 and all(m.is_cuda for m in sp.masks.values())
    assert all(torch.equal(sp.masks[n].sum(1), c) for n, c in counts.items())
    assert_masked_kernels_zero(model)
    for layer in sw_layers(model).values():
        off = layer.kernel_mask == 0
        assert torch.count_nonzero(opt.state[layer.weight]["exp_avg"][off]) == 0
