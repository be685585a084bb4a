"""The split search (`archselect search --split gm|exhaustive`): few-shot NAS as a schedule around the normal search.

    train the supernet up to the first split epoch, α fixed (official warm-up)
    at each split epoch, every current sub-supernet splits on its own best edge (gradient matching) or on the chosen
        edge into one sub-supernet per op (exhaustive); children inherit weights, α, optimizer and schedule
    after the last split: re-initialise each sub-supernet with a fresh cosine schedule (restart `final`, official) or
        keep the inherited state (`inherit`), then search on with α learned up to search.epochs
    run the configured selectors in every leaf and keep the leaf whose selection scores best on the search-valid
        split (one-hot sub-network in its own sub-supernet); `choose: oracle` picks by benchmark instead (analysis)

Every node of the tree is a normal run directory with its own checkpoints (see tree.py), so an interrupted search
resumes where it stopped. The leaves are independent jobs: `leaf_job` takes one picklable dict (config, paths, device
name), so an executor (executors.py) may run them in parallel. Log lines of a node carry its id (`[0-1] ...`).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from .. import logs
from ..arch import edge_label
from ..config import RunConfig, SplitConfig, build, check, to_dict
from ..data.loader import derive_seed
from ..environment import configure, seed_everything
from ..errors import UserError
from ..evaluate.lookup import benchmark_metrics
from ..executors import Executor
from ..files import atomic_write_json, read_json
from ..jobs import run_jobs
from ..runs import RunDir
from ..scoring.evaluator import MaskedEvaluator, take_batches
from ..scoring.workers import Workers
from ..optimizers.loop import SearchRun, train_supernet
from ..selection.stage import build_context, run_selectors
from .choice import SplitOutcome, check_oracle, choose_leaves
from .gradient_matching import candidate_edges, cyclic_batches, measure
from .partition import best_partition, pick_edge, singletons
from .settings import Settings, settings_for
from .split import enabled_ops, split_masks
from .tree import ROOT, Tree, child_id, node_path, phase

log = logging.getLogger(__name__)


def node_config(cfg: RunConfig, end: int) -> RunConfig:
    """A node's own config: a plain search up to its phase end (so `archselect select RUN/split/ID` works)."""
    out = copy.deepcopy(cfg)
    out.search.epochs = end
    out.split = SplitConfig()
    return out


def node_seed(seed: int, node_id: str) -> int:
    return seed if node_id == ROOT else derive_seed(seed, *node_path(node_id))


# -- one node ------------------------------------------------------------------------------------------------------

def schedule_length(s: Settings, level: int, start: int) -> int:
    """The epochs the node's optimizer schedules (cosine lr, τ) span: all search.epochs, as one schedule runs
    through the splits, except after a final restart with `restart_schedule: remaining` (DARTS' fix_sche)."""
    restarted = level == s.levels and s.restart == "final"
    return s.total_epochs - start if restarted and s.restart_schedule == "remaining" else s.total_epochs


def node_search(cfg: RunConfig, s: Settings, run: RunDir, level: int, epochs: tuple[int, int],
                device: torch.device) -> SearchRun:
    """A SearchRun on the node's directory whose loop stops at the node's phase end while its optimizer schedules
    span `schedule_length` epochs. Before the last split α stays fixed (official warm-up) unless `warmup_alpha` is
    `learn`."""
    start, end = epochs
    search = SearchRun(node_config(cfg, schedule_length(s, level, start)), run, device, until=end)
    if level < s.levels and s.warmup_alpha != "learn":
        search.optimizer.freeze_alpha()
    return search


def init_node(cfg: RunConfig, s: Settings, tree: Tree, node_id: str, device: torch.device,
              source: SearchRun | None, masks: dict[str, torch.Tensor] | None) -> None:
    """Create the node's run directory and its first checkpoint (at its start epoch): inherited from `source`,
    or freshly initialised (the root; the leaves of a final restart) from a seed derived from the node's id."""
    node = tree.nodes[node_id]
    start, end = node["epochs"]
    run = tree.node_dir(node_id)
    run.write_config(node_config(cfg, end))
    seed_everything(node_seed(cfg.seed, node_id))
    search = node_search(cfg, s, run, node["level"], (start, end), device)
    if source is not None:
        search.supernet.load_state_dict(source.supernet.state_dict())
        search.optimizer.load_state_dict(source.optimizer.state_dict())
    elif node_id == ROOT and s.warmup_alpha == "equal":  # DARTS' fix_alpha_equal: a uniform mixture
        with torch.no_grad():
            for a in search.supernet.arch_parameters():
                a.zero_()
    for ct, m in (masks or {}).items():
        search.supernet.set_mask(ct, m)
    search.epoch, search.step, search.meters = start, 0, {}
    search.save()


def open_node(cfg: RunConfig, s: Settings, tree: Tree, node_id: str, device: torch.device) -> SearchRun:
    node = tree.nodes[node_id]
    search = node_search(cfg, s, tree.node_dir(node_id), node["level"], node["epochs"], device)
    if not search.restore():
        raise UserError(f"{tree.node_dir(node_id).path} has no checkpoint; the split tree is damaged "
                        f"(delete {tree.path} and the split/ folder to restart the split search)")
    return search


# -- deciding a split ----------------------------------------------------------------------------------------------

def _splittable(supernet, s: Settings, level: int, ct: str, e: int) -> bool:
    """Whether the edge's enabled ops form the level's groups: split.sizes exactly, else groups of >= 2 ops
    (MobileNet: a stage's first layer has 6 ops, the others 7)."""
    if s.method != "gm":
        return True
    k = len(enabled_ops(supernet, ct, e))
    return k == sum(s.sizes) if s.sizes is not None else k >= 2 * s.groups_at(level)


def _candidates(supernet, s: Settings, level: int) -> list[tuple[str, int]]:
    free = [(ct, e) for ct, e in candidate_edges(supernet, s.cell_types) if _splittable(supernet, s, level, ct, e)]
    if s.edges is not None:
        ct, e = s.cell_types[0], s.edges[level]
        if (ct, e) not in free:
            edges = supernet.edges.get(ct, ())
            where = edge_label(e, *edges[e]) if 0 <= e < len(edges) else f"edge {e}"
            raise UserError(f"split.edges[{level}] = {e}: {where} of cell type {ct!r} does not exist, is split "
                            f"already or cannot form {s.groups_at(level)} groups")
        return [(ct, e)]
    if not free:
        raise UserError(f"no edge of cell types {', '.join(s.cell_types)} is left to split at split {level + 1} "
                        f"into {s.groups_at(level)} groups; use fewer split.epochs or split.groups")
    return free[:1] if s.edge_criterion == "first" else free


def decide_split(sn, train, epoch: int, s: Settings, level: int) -> dict[str, Any]:
    """The split of a trained (sub-)supernet `sn`: which edge, which groups, and the evidence (distances, edge
    scores, cost). Gradients are measured on the first `s.batches` batches of epoch `epoch` of `train`."""
    names = sn.op_names
    candidates = _candidates(sn, s, level)
    criterion = s.edge_criterion if s.edge_criterion in ("cut", "within") else "cut"
    record: dict[str, Any] = {"epoch": epoch, "criterion": criterion if len(candidates) > 1 else "given",
                              "candidates": [], "cost": None}
    if s.method == "exhaustive" and len(candidates) == 1:
        ct, e = candidates[0]
        groups = [[k] for k in enabled_ops(sn, ct, e)]
    else:
        gradients = s.batches * sum(len(enabled_ops(sn, ct, e)) for ct, e in candidates)
        with logs.Progress("gradient matching", gradients, "op gradient"):
            measured, cost = measure(sn, candidates, cyclic_batches(train, epoch, s.batches), s.distance,
                                     s.op_weight, s.shared)
        parts = [best_partition(d.mean, s.groups_at(level), s.sizes) if s.method == "gm" else singletons(d.mean)
                 for d in measured]
        best = pick_edge(parts, criterion)
        ct, e = measured[best].cell_type, measured[best].edge
        groups = [[measured[best].ops[i] for i in g] for g in parts[best].groups]
        record["candidates"] = [{**d.to_dict(names), "within": p.within, "cut": p.cut,
                                 "groups": [[names[d.ops[i]] for i in g] for g in p.groups]}
                                for d, p in zip(measured, parts)]
        record["cost"] = cost
    src, dst = sn.edges[ct][e]
    record.update({"cell_type": ct, "edge": e, "nodes": [src, dst], "groups": [[names[k] for k in g] for g in groups]})
    return record


def _enabled_names(masks: dict[str, torch.Tensor], op_names) -> dict[str, list[list[str]]]:
    return {ct: [[op_names[k] for k, on in enumerate(row) if on] for row in m.tolist()] for ct, m in masks.items()}


def advance(cfg: RunConfig, s: Settings, tree: Tree, node_id: str, device: torch.device) -> list[str]:
    """Train a node to its split epoch, decide its split (once) and create its children; returns their ids."""
    node = tree.nodes[node_id]
    if node["split"] is not None and all(tree.has_checkpoint(c) for c in node["children"]):
        return node["children"]
    with logs.prefix(node_id):
        search = open_node(cfg, s, tree, node_id, device)
        search.train()
        if node["split"] is None:
            split = decide_split(search.supernet, search.data.train, search.epoch, s, node["level"])
            log.info(f"split at epoch {split['epoch']}: {split['cell_type']} "
                     f"{edge_label(split['edge'], *split['nodes'])} into "
                     + " | ".join("{" + ", ".join(g) + "}" for g in split["groups"]))
            tree.set_split(node_id, split, [child_id(node_id, g) for g in range(len(split["groups"]))])
    split, names = node["split"], search.supernet.op_names
    groups = [[names.index(n) for n in g] for g in split["groups"]]
    level = node["level"] + 1
    restart = level == s.levels and s.restart == "final"
    for cid, masks in zip(node["children"], split_masks(search.supernet, split["cell_type"], split["edge"], groups)):
        tree.add_node(cid, node_id, level, phase(level, s.epochs, s.total_epochs), _enabled_names(masks, names))
        if not tree.has_checkpoint(cid):
            init_node(cfg, s, tree, cid, device, None if restart else search, masks)
    return node["children"]


# -- leaves --------------------------------------------------------------------------------------------------------

def score_leaf(cfg: RunConfig, run: RunDir, names: list[str], bn: str, device: torch.device,
               workers: Workers | None = None) -> dict[str, Any]:
    """Run the selectors on a trained leaf and score each selection: accuracy of its one-hot sub-network in the
    leaf's supernet on the whole search-valid split, BN in mode `bn` (train: batch statistics, running statistics
    untouched, as the official code scores projected supernets; eval: the running statistics)."""
    selections = run_selectors(cfg, run, names, device, workers)
    ctx = build_context(cfg, run, device)
    scorer = MaskedEvaluator(ctx.supernet, take_batches(ctx.valid), bn=bn)
    out = {}
    for name, sel in selections.items():
        outcome = scorer(ctx.supernet.one_hot_weights(sel.architecture))
        out[name] = {"architecture": str(sel.architecture), "arch": sel.architecture.to_dict(), "bn": bn,
                     "valid_acc": outcome.accuracy, "valid_loss": outcome.loss,
                     "benchmark": benchmark_metrics(sel.architecture, cfg.benchmark)}
    return out


def run_leaf(cfg: RunConfig, root: RunDir, leaf_id: str, device: torch.device) -> dict[str, Any]:
    """Finish one leaf's search, run the selectors, score them. Idempotent: a finished leaf returns its recorded
    result; an interrupted one resumes from its checkpoints."""
    run = root.node(leaf_id)
    if run.leaf_file.exists():
        return read_json(run.leaf_file, "leaf result")
    configure(cfg.seed, cfg.deterministic, cfg.threads)  # a leaf computes the same, in turn or as a job anywhere
    s = settings_for(cfg)
    with run, logs.prefix(leaf_id):
        search = node_search(cfg, s, run, s.levels, phase(s.levels, s.epochs, s.total_epochs), device)
        if not search.restore():
            raise UserError(f"{run.path} has no checkpoint; resume the split search from {root.path}")
        train_supernet(search, resume=False)
        metrics = run.read_metrics()
        result = {"id": leaf_id,
                  "enabled": _enabled_names({ct: search.supernet.mask(ct) for ct in search.supernet.cell_types},
                                            search.supernet.op_names),
                  "supernet_valid_acc": metrics[-1]["search_valid_acc"] if metrics else None,
                  "selections": score_leaf(node_config(cfg, cfg.search.epochs), run, list(cfg.select.selectors),
                                           s.bn, device)}
        atomic_write_json(run.leaf_file, result)
    return result


def leaf_jobs(cfg: RunConfig, root: Path, leaves: list[str], device: str) -> list[dict[str, Any]]:
    """The leaves of a split search as executor jobs (plain data)."""
    return [{"id": leaf, "root": str(root), "device": device, "config": to_dict(cfg)} for leaf in leaves]


def leaf_job(job: dict[str, Any]) -> dict[str, Any]:
    """One leaf as an executor job (picklable: config, paths and device name only)."""
    logs.setup()
    cfg = build(RunConfig, job["config"], "run")
    check(cfg)
    return run_leaf(cfg, RunDir(job["root"]), job["id"], torch.device(job["device"]))


# -- the driver ----------------------------------------------------------------------------------------------------

def open_tree(cfg: RunConfig, run: RunDir, s: Settings) -> Tree:
    return Tree.open(run, dataclasses.asdict(s) | {"seed": cfg.seed, "optimizer": cfg.search.optimizer})


def split_search(cfg: RunConfig, run: RunDir, device: torch.device, executor: Executor | None = None) -> SplitOutcome:
    """The whole split search in `run` (new or interrupted); returns what it found. The leaves run in turn, or as
    jobs on `executor` (e.g. Ray) when one is given."""
    s = settings_for(cfg)
    check_oracle(cfg, s)
    tree = open_tree(cfg, run, s)
    if not tree.has_checkpoint(ROOT):
        init_node(cfg, s, tree, ROOT, device, None, None)
    frontier = [ROOT]
    for _ in s.epochs:
        frontier = [c for node_id in frontier for c in advance(cfg, s, tree, node_id, device)]
    tree.set_leaves(frontier)
    log.info(f"{len(frontier)} sub-supernets: {', '.join(frontier)}")
    pending = [leaf for leaf in frontier if tree.nodes[leaf]["result"] is None]
    if executor is None:
        for leaf in pending:
            tree.set_result(leaf, run_leaf(cfg, run, leaf, device))
    else:
        _run_leaves_on(executor, cfg, run, tree, pending, device)
    outcome = choose_leaves(cfg, tree, s, list(cfg.select.selectors))
    log.info(f"chosen sub-supernet {outcome.split['leaf']} ({outcome.split['label']})")
    return outcome


def _run_leaves_on(executor: Executor, cfg: RunConfig, run: RunDir, tree: Tree, leaves: list[str], device) -> None:
    """Leaves as independent jobs; every finished one is recorded before a failure is reported, so --resume
    redoes only the failed ones."""
    results = run_jobs(executor, leaf_job, leaf_jobs(cfg, run.path, leaves, str(device)))
    for r in results:
        if r.ok:
            tree.set_result(r.id, r.value)
    failed = [r for r in results if not r.ok]
    if failed:
        raise UserError(f"sub-supernet(s) {', '.join(r.id for r in failed)} failed ({failed[0].error}); "
                        f"fix the cause and --resume {run.path}")


def reselect(cfg: RunConfig, run: RunDir, names: list[str], device: torch.device,
             workers: Workers | None = None) -> SplitOutcome:
    """Selection on a finished split search: run the selectors in every leaf (their independent evaluations on
    `workers`, default: as `select.workers` says) and choose again."""
    s = settings_for(cfg)
    check_oracle(cfg, s)
    tree = open_tree(cfg, run, s)
    if not tree.record["leaves"] or any(tree.nodes[i]["result"] is None for i in tree.record["leaves"]):
        raise UserError(f"{run.path}: the split search is unfinished; finish it with archselect search --resume")
    for leaf in tree.record["leaves"]:
        leaf_run = tree.node_dir(leaf)
        result = dict(tree.nodes[leaf]["result"])
        with leaf_run, logs.prefix(leaf):
            ncfg = node_config(cfg, cfg.search.epochs)
            result["selections"] = {**result["selections"],
                                    **score_leaf(ncfg, leaf_run, names, s.bn, device, workers)}
            atomic_write_json(leaf_run.leaf_file, result)
        tree.set_result(leaf, result)
    return choose_leaves(cfg, tree, s, names)


def analyse(cfg: RunConfig, run: RunDir, device: torch.device) -> dict[str, Any]:
    """`archselect split RUN`: the gradient-matching split the trained supernet of RUN would make, with every
    candidate edge's distances and scores (written to RUN/split-scores.json). Nothing is trained or changed."""
    gm = copy.deepcopy(cfg)
    gm.split.method = "gm"
    s = settings_for(gm)
    ctx = build_context(cfg, run, device)
    record = decide_split(ctx.supernet, ctx.train, len(run.read_metrics()), s, 0)
    record["settings"] = dataclasses.asdict(s)
    atomic_write_json(run.split_scores_file, record)
    edges = ctx.supernet.edges  # each candidate's nodes, for the printed table (the file names edges by index)
    return {**record, "candidates": [{**c, "nodes": list(edges[c["cell_type"]][c["edge"]])}
                                     for c in record["candidates"]]}
