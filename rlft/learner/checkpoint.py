"""Learner checkpoints with `torch.distributed.checkpoint` (DCP).

Every rank writes its own shards of the model and the optimizer state, so no
rank ever holds the full optimizer state, and a checkpoint loads into a
different world size (DCP reshards). Only tensors go through DCP: DCP stores
other values pickled and reads them back with `weights_only=False`, so the few
plain values (scheduler state, learning rates, counters) go to a JSON file
instead, and per-rank RNG states to `torch.save` files read with
`weights_only=True`.

Only trainable parameters are stored: with LoRA that is the adapters (the
frozen base comes from the model source again), and `learner.json` records
which kind of model wrote the checkpoint (the `tag`), so a LoRA checkpoint
cannot be loaded into a full fine-tuning learner or one with other adapters.

Layout of a checkpoint folder:
    *.distcp, .metadata      trainable model + optimizer tensors (DCP)
    learner.json             scheduler, param-group learning rates, counters, tag
    rng-rank{r}.pt           torch RNG state of rank r
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

log = logging.getLogger("rlft.learner")

FORMAT = 1
META = "learner.json"


def _tensors(module: torch.nn.Module, opt: torch.optim.Optimizer
             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(model state, optimizer state, flat name -> tensor view of both).

    The flat dict holds the very tensors of the two state dicts, so `dcp.load`
    into it fills them in place. `get_optimizer_state_dict` creates the state
    of a fresh optimizer (a zero-lr step) so there is something to load into.
    """
    # Frozen parameters are left out under every name: StateDictOptions'
    # ignore_frozen_params misses the second name of a tied one (lm_head).
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    model = {k: v for k, v in get_model_state_dict(module).items() if k not in frozen}
    optim = get_optimizer_state_dict(module, opt)
    flat: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.items()}
    for fqn, state in optim["state"].items():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {fqn}.{key} is a {type(value).__name__}; the "
                                "learner checkpoint stores tensors only (use torch.optim.AdamW)")
            flat[f"optim/{fqn}/{key}"] = value
    return model, optim, flat


def save(path: str, module: torch.nn.Module, opt: torch.optim.Optimizer,
         sched: torch.optim.lr_scheduler.LRScheduler, counters: Mapping[str, int],
         rank: int, tag: str = "full") -> None:
    """Collective: every rank calls it with the same `path` (a shared filesystem)."""
    os.makedirs(path, exist_ok=True)
    _, optim, flat = _tensors(module, opt)
    dcp.save(flat, checkpoint_id=path)
    torch.save(_rng_state(), os.path.join(path, f"rng-rank{rank}.pt"))
    if rank == 0:
        meta = {"format": FORMAT, "world_size": dist.get_world_size(),
                "scheduler": sched.state_dict(),
                "lrs": [{k: g[k] for k in ("lr", "initial_lr") if k in g}
                        for g in optim["param_groups"]],
                "counters": dict(counters), "tag": tag}
        with open(os.path.join(path, META), "w") as f:
            json.dump(meta, f, indent=1)
    dist.barrier()  # the folder is complete only once every rank has written


def load(path: str, module: torch.nn.Module, opt: torch.optim.Optimizer,
         sched: torch.optim.lr_scheduler.LRScheduler, rank: int, tag: str = "full"
         ) -> dict[str, int]:
    """Collective. Restores model, optimizer, scheduler and RNG; returns the counters.

    Hyper-parameters (betas, weight decay, eps) come from the new learner's
    params, so a resumed run may change them; the step-dependent learning rate
    comes from the checkpoint.
    """
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path!r} is not a learner checkpoint (no {META}); pass the "
                                "folder that Learner.save wrote")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: checkpoint format {meta.get('format')!r}, this learner "
                         f"reads format {FORMAT}")
    if meta.get("tag", "full") != tag:
        raise ValueError(f"{meta_path}: written by a learner with {meta.get('tag', 'full')!r}, "
                         f"this one has {tag!r}; set model.lora.* as in the run that saved it")
    model, optim, flat = _tensors(module, opt)
    dcp.load(flat, checkpoint_id=path)  # raises on any key the checkpoint lacks
    # Frozen parameters are not in `model`; they are not missing.
    frozen = any(not p.requires_grad for p in module.parameters())
    set_model_state_dict(module, model, options=StateDictOptions(strict=not frozen))
    if len(meta["lrs"]) != len(optim["param_groups"]):
        raise ValueError(f"{meta_path}: {len(meta['lrs'])} optimizer param groups saved, "
                         f"{len(optim['param_groups'])} now; the model or optimizer changed")
    for group, lrs in zip(optim["param_groups"], meta["lrs"]):
        group.update(lrs)
    set_optimizer_state_dict(module, opt, optim)
    sched.load_state_dict(meta["scheduler"])
    _load_rng(os.path.join(path, f"rng-rank{rank}.pt"), meta["world_size"])
    return {k: int(v) for k, v in meta["counters"].items()}


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _load_rng(path: str, saved_world: int) -> None:
    if not os.path.isfile(path):
        # A checkpoint from a smaller world has no RNG file for this rank; the
        # update itself draws no random numbers unless the model has dropout.
        log.warning("no RNG state %s (checkpoint written by %d ranks); keeping this rank's "
                    "seeded RNG", path, saved_world)
        return
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
