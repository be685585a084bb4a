"""The `archselect` command. Each subcommand is one stage reading and writing a run directory.

Errors a user can cause end in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import UserError
from .executors import EXECUTORS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default prints the whole usage first)
        where = self.prog.removeprefix("archselect").strip()
        raise UserError(f"{where}: {message}" if where else message)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. search.epochs=10")


def _add_executor(p: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    """--executor and --ray-address, the same for every command that hands out independent jobs."""
    p.add_argument("--executor", default=default, choices=EXECUTORS, help=f"engine for {what}")
    p.add_argument("--ray-address", help="Ray cluster to run on (auto, HOST:6379, ray://HOST:10001); default: a "
                   "local Ray instance")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="archselect", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("search", help="train a supernet, then select an architecture from it")
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--out", help="run directory to create (default: runs/search-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN after a kill (overrides are recorded)")
    p.add_argument("--selector", help="comma-separated selectors to run after the search (default from config)")
    p.add_argument("--seed", type=int)
    p.add_argument("--split", choices=("gm", "exhaustive"),
                   help="few-shot NAS: split the supernet by gradient matching or exhaustively (docs/fewshot.md)")
    p.add_argument("--seeds", help="comma-separated seeds: one independent search per seed into RUN/seed-N/")
    _add_executor(p, "the independent jobs of --seeds and --split: sequential (default) or ray", "sequential")
    _add_common(p)

    p = sub.add_parser("select", help="run selectors on the supernet of a finished search")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--selector", required=True, help="comma-separated selectors, e.g. magnitude,perturbation")
    p.add_argument("--workers", type=int, metavar="N", help="split the Shapley permutations and the perturbation candidates over "
                   "N workers, with the same results (default: select.workers, 1); under torchrun every rank is one")
    _add_executor(p, "the --workers: sequential (in turn, here; for checking) or ray (default: select.executor)")
    _add_common(p)

    p = sub.add_parser("train", help="retrain an architecture from scratch; report test accuracy, params, FLOPs")
    # ARCH and the overrides are both positional: write the options before ARCH or after the overrides
    p.add_argument("arch", metavar="ARCH", help="architecture: a JSON file (result.json, selections/NAME.json), "
                   "a NAS-Bench-201 string or a DARTS genotype")
    p.add_argument("--config", help="YAML config; its train section (default: the NAS-Bench-201 protocol)")
    p.add_argument("--out", help="run directory to create (default: runs/train-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN", help="continue the retraining in RUN after a kill (same ARCH)")
    p.add_argument("--seed", type=int)
    _add_common(p)

    p = sub.add_parser("split", help="gradient-matching scores of a trained supernet: which edge GM-NAS would "
                       "split, into which groups (writes RUN/split-scores.json)")
    p.add_argument("run", metavar="RUN")
    _add_common(p)

    p = sub.add_parser("show", help="print a summary of a run directory")
    p.add_argument("run", metavar="RUN")

    p = sub.add_parser("report", help="plot a run into RUN/report/ (alpha trajectories, score heatmaps, cells, an "
                       "HTML page), or write a bench's comparison page into BENCH/report/index.html")
    p.add_argument("run", metavar="RUN_OR_BENCH")
    p.add_argument("--engine", default="auto", choices=("auto", "dot", "matplotlib"),
                   help="cell diagrams: Graphviz dot, matplotlib, or auto (dot when installed; default)")

    p = sub.add_parser("benchmark", help="NAS-Bench-201 table: import one, query an architecture")
    bsub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    q = bsub.add_parser("import", help="copy/convert a table or an official release into the cache")
    q.add_argument("path")
    q = bsub.add_parser("query", help="print the benchmark row of an architecture (string, index or JSON file)")
    q.add_argument("arch")
    q.add_argument("--table", help="table CSV (default: the imported one)")

    p = sub.add_parser("bench", help="run a (space x optimizer x split x selector x seed) matrix; resumes")
    p.add_argument("config", metavar="CONFIG", help="bench YAML (e.g. configs/bench/nb201-proxy.yaml)")
    p.add_argument("--out", help="bench directory (default: benches/<name>); rerun to finish an interrupted bench")
    _add_executor(p, "the supernet groups (default from the config: sequential)")
    p.add_argument("--no-report", action="store_true", help="write the tables but not the HTML report")
    p.add_argument("--device", help="every group's device: auto, cpu, cuda or cuda:N (default: the config's run.device)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="bench config overrides, right after CONFIG, e.g. seeds=[0] run.search.epochs=4")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse, letting key=value overrides stand anywhere (argparse alone ends a positional list at the first
    option, so `select RUN --selector x k=v` would reject `k=v`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"archselect: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("archselect: interrupted", file=sys.stderr)
        return 130


# -- search ---------------------------------------------------------------------------------------------------------

def _config_for(args):
    from .config import load_config, resume_config
    from .runs import RunDir

    if args.resume:
        run = RunDir(args.resume)
        if not run.exists():
            raise UserError(f"{args.resume} is not a run directory (no config.yaml)")
        if args.config or args.out:
            raise UserError("--resume takes its config from the run directory; drop --config/--out")
        seed = [f"seed={args.seed}"] if args.seed is not None else []  # a changed seed is refused, not ignored
        return run, resume_config(run.file("config.yaml"), [*args.overrides, *seed])
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("search-%Y%m%d-%H%M%S")
    run = RunDir(out)
    if run.exists():
        raise UserError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    return run, cfg


def cmd_search(args) -> int:
    from . import distributed
    from .environment import choose_device, configure

    if args.resume and Path(args.resume, "jobs.json").is_file():
        return _search_jobs(args)
    if args.split:  # as an override: validated with the config and recorded by --resume
        args.overrides = [*args.overrides, f"split.method={args.split}"]
    run, cfg = _config_for(args)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.device:
        cfg.device = args.device
    if args.selector:
        cfg.select.selectors = _names(args.selector)
    if args.seeds:
        return _search_jobs(args, run.path, cfg)
    executor = None
    if args.executor != "sequential" or args.ray_address:
        if cfg.split.method == "none":
            raise UserError("--executor and --ray-address run independent jobs: add --seeds (one search per seed) "
                            "or --split (sub-supernets); one search on several devices runs under torchrun "
                            "(docs/scaling.md)")
        from .executors import make_executor

        executor = make_executor(args.executor, args.ray_address)
    device = distributed.init(choose_device(cfg.device))  # under torchrun: this rank's device, in the group
    try:
        configure(cfg.seed, cfg.deterministic, cfg.threads)
        distributed.barrier()  # every rank has checked the run directory before rank 0 writes to it
        search_into(run, cfg, device, resume=bool(args.resume), overrides=args.overrides, executor=executor)
    finally:
        distributed.shutdown()
    return 0


def search_into(run, cfg, device, resume: bool = False, overrides=(), log=print, executor=None) -> None:
    """Search, save the supernet and select, in `run`. Under torchrun every rank trains; rank 0 alone locks and
    writes the run directory, and selects, the other ranks computing shares of its evaluations."""
    import contextlib

    from . import distributed
    from .config import dump_yaml
    from .runs import atomic_write_bytes, discard_if_stillborn, manifest, record_manifest
    from .ranks import serve
    from .search.loop import SearchRun, save_supernet
    from .selection.workers import launch_workers

    main = distributed.is_main()
    with discard_if_stillborn(run.path, main and not resume), (run if main else contextlib.nullcontext()):
        if main:
            info = {**manifest(cfg.seed, str(device)), "world_size": distributed.world()}
            atomic_write_bytes(run.file("config.yaml"), dump_yaml(cfg).encode())
            record_manifest(run.file("manifest.json"), info, resume, overrides)
            log(f"run directory: {run.path}")
        if cfg.split.method != "none":
            _split_and_report(run, cfg, device, log, executor)
            return
        search = SearchRun(cfg, run, device, log)
        if resume and search.restore():
            search.log(f"resumed at epoch {search.epoch + 1}, step {search.step}")
        search.train()
        if not main:
            serve()  # compute shares of rank 0's selection evaluations
            return
        with launch_workers(cfg.select.workers, cfg.select.executor, device=device) as workers:
            save_supernet(run, search.supernet)
            _select_and_report(cfg, run, cfg.select.selectors, device, workers)


def _search_jobs(args, root: Path | None = None, cfg=None) -> int:
    """--seeds: independent searches, one per seed, into RUN/seed-N/ on the chosen executor; --resume RUN reruns
    the unfinished ones (each resumes from its own checkpoint)."""
    from . import distributed
    from .executors import make_executor
    from .jobs import read_jobs, run_jobs, seed_jobs

    launch = distributed.launch_env()
    if launch is not None and launch.world_size > 1:
        raise UserError("--seeds runs independent searches: launch it without torchrun (docs/scaling.md)")
    if root is None:
        if args.config or args.out or args.seeds or args.overrides or args.seed is not None or args.selector:
            raise UserError("--resume of a multi-seed run takes everything from RUN/jobs.json; drop the other options")
        root = Path(args.resume)
        jobs = read_jobs(root)
    else:
        if args.seed is not None or args.resume:
            raise UserError("--seeds starts a new set of searches: drop --seed and --resume")
        jobs = seed_jobs(cfg, root, args.seeds)
    with make_executor(args.executor, args.ray_address) as executor:
        results = run_jobs(executor, jobs, root)
    failed = [r for r in results if not r.ok]
    for r in results:
        print(f"{r.id:>10}: {r.value['architecture'] if r.ok else 'FAILED ' + str(r.error)}")
    if failed:
        print(f"archselect: {len(failed)} of {len(results)} jobs failed (details in {root / 'summary.json'}); "
              f"rerun them with: archselect search --resume {root}", file=sys.stderr)
        return 1
    return 0


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--selector needs at least one selector name")
    return names


def _select_and_report(cfg, run, names, device, workers=None) -> None:
    from .evaluate.lookup import benchmark_metrics
    from .runs import atomic_write_json
    from .selection.stage import run_selectors

    selections = run_selectors(cfg, run, names, device, workers=workers)
    first = selections[names[0]]
    metrics = run.read_metrics()
    result = {
        "architecture": first.architecture.to_dict(),
        "selector": first.selector,
        "selections": {n: str(s.architecture) for n, s in selections.items()},
        "benchmark": benchmark_metrics(first.architecture, cfg.benchmark),
        "search": {"epochs": len(metrics), "seconds": sum(m.get("seconds", 0.0) for m in metrics),
                   "search_valid_acc": metrics[-1]["search_valid_acc"] if metrics else None},
    }
    atomic_write_json(run.file("result.json"), result)
    print(f"architecture ({first.selector}): {first.architecture}")
    _print_benchmark(result["benchmark"])


def _split_and_report(run, cfg, device, log, executor=None) -> None:
    from . import distributed
    from .fewshot.schedule import split_search

    if distributed.world() > 1:
        raise UserError("a split search (--split) runs in one process: launch it without torchrun")
    result = split_search(cfg, run, device, log, executor)
    split = result["split"]
    print(f"architecture ({result['selector']}, {split['rule']} choice among {split['leaves']} sub-supernets): "
          f"{result['selections'][result['selector']]}")
    _print_split(result)


def _print_split(result: dict) -> None:
    split = result["split"]
    for name, text in result["selections"].items():
        chosen = split["per_selector"][name]
        print(f"{name:>14}: {text}  (sub-supernet {chosen['leaf']}, {split['rule']} choice)")
        _print_benchmark(chosen["benchmark"])


def _print_benchmark(bench: dict) -> None:
    if "note" in bench:
        print(f"benchmark: {bench['note']}")
        return
    keys = ("cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_test")
    print("NAS-Bench-201: " + "  ".join(f"{k} {bench[k]:.2f}" for k in keys if bench.get(k) is not None))


# -- select -----------------------------------------------------------------------------------------------------------

def cmd_select(args) -> int:
    """Under torchrun rank 0 selects and writes while the other ranks compute shares of its evaluations."""
    from . import distributed
    from .config import load_config
    from .environment import choose_device, configure
    from .ranks import serve
    from .runs import open_run

    run = open_run(args.run)
    chosen = {"workers": args.workers, "executor": args.executor}
    cfg = load_config(run.file("config.yaml"),
                      [*args.overrides, *(f"select.{k}={v}" for k, v in chosen.items() if v is not None)])
    if args.device:
        cfg.device = args.device
    names = _names(args.selector)
    launch = distributed.launch_env()
    if launch is not None and launch.world_size > 1:  # checked on every rank, before rank 0 starts handing out work
        if args.ray_address or any(v is not None for v in chosen.values()):
            raise UserError("under torchrun every rank is a worker: drop --workers, --executor and --ray-address")
        if cfg.split.method != "none":
            raise UserError("selection in a split search runs in one process: launch it without torchrun")
    elif args.ray_address and cfg.select.executor != "ray":
        raise UserError("--ray-address needs --executor ray")
    device = distributed.init(choose_device(cfg.device))
    try:
        configure(cfg.seed, cfg.deterministic, cfg.threads)
        if not distributed.is_main():
            serve()
            return 0
        selections = _select_in(run, cfg, names, device, args.ray_address)
    finally:
        distributed.shutdown()
    if selections is None:
        return 0
    from .evaluate.lookup import benchmark_metrics

    for name, s in selections.items():
        print(f"{name:>14}: {s.architecture}")
        _print_benchmark(benchmark_metrics(s.architecture, cfg.benchmark))
    return 0


def _select_in(run, cfg, names, device, ray_address):
    """Run the selectors on RUN (a split search: in every sub-supernet, choosing again, printed here: None)."""
    from .selection.stage import run_selectors
    from .selection.workers import launch_workers

    with launch_workers(cfg.select.workers, cfg.select.executor, ray_address, device) as workers, run:
        if cfg.split.method != "none":
            from .fewshot.schedule import reselect

            _print_split(reselect(cfg, run, names, device, workers=workers))
            return None
        return run_selectors(cfg, run, names, device, workers=workers)


# -- split ------------------------------------------------------------------------------------------------------------

def cmd_split(args) -> int:
    from .config import load_config
    from .environment import choose_device, configure
    from .fewshot.schedule import analyse
    from .runs import open_run

    run = open_run(args.run)
    cfg = load_config(run.file("config.yaml"), args.overrides)
    if args.device:
        cfg.device = args.device
    configure(cfg.seed, cfg.deterministic, cfg.threads)
    with run:
        record = analyse(cfg, run, choose_device(cfg.device))
    for c in record["candidates"]:
        mark = "*" if (c["cell_type"], c["edge"]) == (record["cell_type"], record["edge"]) else " "
        groups = " | ".join("{" + ", ".join(g) + "}" for g in c["groups"])
        print(f"{mark} {c['cell_type']} edge {c['edge']:>2}: cut {c['cut']:.3f}  within {c['within']:.3f}  {groups}")
    print(f"* the edge split by the {record['criterion']} criterion; distances in {run.file('split-scores.json')}")
    return 0


# -- show -------------------------------------------------------------------------------------------------------------

def cmd_show(args) -> int:
    from .runs import open_run, read_result

    run = open_run(args.run)
    from .config import load_config

    cfg = load_config(run.file("config.yaml"))
    metrics = run.read_metrics()
    print(f"run {run.path}: {cfg.space.name} (C={cfg.space.C}, N={cfg.space.N}) on {cfg.data.dataset}, "
          f"optimizer {cfg.search.optimizer}, seed {cfg.seed}")
    if cfg.split.method != "none":
        from .fewshot.tree import describe

        print(describe(run))
    else:
        print(f"epochs done: {len(metrics)}/{cfg.search.epochs}")
    if metrics:
        last = metrics[-1]
        print(f"last epoch: train acc {last.get('train_acc', float('nan')):.3f}, "
              f"search-valid acc {last.get('search_valid_acc', float('nan')):.3f}, "
              f"{sum(m.get('seconds', 0.0) for m in metrics):.0f}s in all")
    if run.file("result.json").exists():
        result = read_result(run.file("result.json"))
        for name, text in result.get("selections", {}).items():
            print(f"{name:>14}: {text}")
        _print_benchmark(result.get("benchmark", {"note": "no benchmark metrics recorded"}))
    else:
        print("no result yet (search unfinished: archselect search --resume RUN)")
    return 0


# -- train ------------------------------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from .evaluate.train import train_command

    train_command(args.arch, args.config, args.out, args.resume, args.overrides, args.seed, args.device)
    return 0


# -- benchmark --------------------------------------------------------------------------------------------------------

def cmd_benchmark(args) -> int:
    from .evaluate.benchmark import IMPORT_HINT, NB201Table, find_table, import_table

    if args.action == "import":
        path = import_table(args.path)
        table = NB201Table.load(path)
        print(f"imported {len(table)} architectures into {path}")
        return 0
    table = find_table(args.table)
    if table is None:
        raise UserError(IMPORT_HINT)
    from .arch import parse_index

    spec = args.arch.strip()
    if parse_index(spec) is not None:  # ASCII digits only (str.isdigit also takes '²', '٣')
        arch = table.arch_at(parse_index(spec))
    else:
        from .arch import load_architecture

        arch = load_architecture(spec)
    for k, v in table.lookup(arch).items():
        print(f"{k:>20}: {v}")
    return 0


# -- bench ------------------------------------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    from .bench.aggregate import write_tables
    from .bench.config import load_bench_config
    from .bench.matrix import run_bench

    cfg = load_bench_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("benches") / cfg.name
    failed = run_bench(cfg, out, args.executor or cfg.executor, args.ray_address, args.device)
    if args.no_report:
        write_tables(cfg, out)
    else:  # aggregates too; `archselect report BENCH` rewrites both from disk
        from .report.html import write_bench_report

        print(f"report: {write_bench_report(out)}")
    print(f"tables: {out / 'results.md'}, {out / 'results.csv'}")
    if failed:
        for r in failed:
            print(f"{r.id}: FAILED {r.error}", file=sys.stderr)
        print(f"archselect: {len(failed)} supernet groups failed (details in {out / 'summary.json'}); rerun the same "
              f"command to retry them", file=sys.stderr)
        return 1
    return 0


# -- report -----------------------------------------------------------------------------------------------------------

def cmd_report(args) -> int:
    from .report.html import is_bench, write_bench_report, write_run_report
    from .report.plots import plot_run

    if is_bench(Path(args.run)):  # a bench directory: its comparison page (bench/, report/html.py)
        print(write_bench_report(args.run, args.engine))
        return 0
    for path in plot_run(args.run, args.engine):
        print(path)
    print(write_run_report(args.run, args.engine))
    return 0


COMMANDS = {"search": cmd_search, "select": cmd_select, "split": cmd_split, "show": cmd_show,
            "benchmark": cmd_benchmark, "bench": cmd_bench, "train": cmd_train, "report": cmd_report}

if __name__ == "__main__":
    sys.exit(main())
