"""The `archselect` command. Each subcommand is one stage reading and writing a run directory.

Errors a user can cause end in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default prints the whole usage first)
        raise UserError(f"{self.prog}: {message}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. search.epochs=10")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="archselect", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("search", help="train a supernet, then select an architecture from it")
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--out", help="run directory to create (default: runs/search-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN after a kill (overrides are recorded)")
    p.add_argument("--selector", help="comma-separated selectors to run after the search (default from config)")
    p.add_argument("--seed", type=int)
    _add_common(p)

    p = sub.add_parser("select", help="run selectors on the supernet of a finished search")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--selector", required=True, help="comma-separated selectors, e.g. magnitude,perturbation")
    _add_common(p)

    p = sub.add_parser("show", help="print a summary of a run directory")
    p.add_argument("run", metavar="RUN")

    p = sub.add_parser("benchmark", help="NAS-Bench-201 table: import one, query an architecture")
    bsub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    q = bsub.add_parser("import", help="copy/convert a table or an official release into the cache")
    q.add_argument("path")
    q = bsub.add_parser("query", help="print the benchmark row of an architecture (string, index or JSON file)")
    q.add_argument("arch")
    q.add_argument("--table", help="table CSV (default: the imported one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"archselect: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("archselect: interrupted", file=sys.stderr)
        return 130


# -- search ---------------------------------------------------------------------------------------------------------

def _config_for(args):
    from .config import load_config
    from .runs import RunDir

    if args.resume:
        run = RunDir(args.resume)
        if not run.exists():
            raise UserError(f"{args.resume} is not a run directory (no config.yaml)")
        if args.config or args.out:
            raise UserError("--resume takes its config from the run directory; drop --config/--out")
        return run, load_config(run.file("config.yaml"), args.overrides)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("search-%Y%m%d-%H%M%S")
    run = RunDir(out)
    if run.exists():
        raise UserError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    return run, cfg


def cmd_search(args) -> int:
    from .config import dump_yaml
    from .environment import choose_device, configure
    from .runs import atomic_write_bytes, atomic_write_json, manifest, read_json
    from .search.loop import SearchRun, save_supernet

    run, cfg = _config_for(args)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.device:
        cfg.device = args.device
    if args.selector:
        cfg.select.selectors = _names(args.selector)
    device = choose_device(cfg.device)
    configure(cfg.seed, cfg.deterministic, cfg.threads)
    with run:
        info = manifest(cfg.seed, str(device))
        if args.resume:
            old = read_json(run.file("manifest.json"), "run manifest")
            old.setdefault("resumes", []).append({**info, "overrides": args.overrides})
            info = old
        atomic_write_bytes(run.file("config.yaml"), dump_yaml(cfg).encode())
        atomic_write_json(run.file("manifest.json"), info)
        print(f"run directory: {run.path}")
        search = SearchRun(cfg, run, device)
        if args.resume and search.restore():
            print(f"resumed at epoch {search.epoch + 1}, step {search.step}")
        search.train()
        save_supernet(run, search.supernet)
        _select_and_report(cfg, run, cfg.select.selectors, device)
    return 0


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--selector needs at least one selector name")
    return names


def _select_and_report(cfg, run, names, device) -> None:
    from .evaluate.lookup import benchmark_metrics
    from .runs import atomic_write_json
    from .selection.stage import run_selectors

    selections = run_selectors(cfg, run, names, device)
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


def _print_benchmark(bench: dict) -> None:
    if "note" in bench:
        print(f"benchmark: {bench['note']}")
        return
    keys = ("cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_test")
    print("NAS-Bench-201: " + "  ".join(f"{k} {bench[k]:.2f}" for k in keys if bench.get(k) is not None))


# -- select -----------------------------------------------------------------------------------------------------------

def cmd_select(args) -> int:
    from .config import load_config
    from .environment import choose_device, configure
    from .runs import RunDir

    run = RunDir(args.run)
    if not run.exists():
        raise UserError(f"{args.run} is not a run directory (no config.yaml)")
    cfg = load_config(run.file("config.yaml"), args.overrides)
    if args.device:
        cfg.device = args.device
    device = choose_device(cfg.device)
    configure(cfg.seed, cfg.deterministic, cfg.threads)
    with run:
        from .selection.stage import run_selectors

        selections = run_selectors(cfg, run, _names(args.selector), device)
    from .evaluate.lookup import benchmark_metrics

    for name, s in selections.items():
        print(f"{name:>14}: {s.architecture}")
        _print_benchmark(benchmark_metrics(s.architecture, cfg.benchmark))
    return 0


# -- show -------------------------------------------------------------------------------------------------------------

def cmd_show(args) -> int:
    from .runs import RunDir, read_json

    run = RunDir(args.run)
    if not run.exists():
        raise UserError(f"{args.run} is not a run directory (no config.yaml)")
    from .config import load_config

    cfg = load_config(run.file("config.yaml"))
    metrics = run.read_metrics()
    print(f"run {run.path}: {cfg.space.name} (C={cfg.space.C}, N={cfg.space.N}) on {cfg.data.dataset}, "
          f"optimizer {cfg.search.optimizer}, seed {cfg.seed}")
    print(f"epochs done: {len(metrics)}/{cfg.search.epochs}")
    if metrics:
        last = metrics[-1]
        print(f"last epoch: train acc {last.get('train_acc', float('nan')):.3f}, "
              f"search-valid acc {last['search_valid_acc']:.3f}, {sum(m['seconds'] for m in metrics):.0f}s in all")
    if run.file("result.json").exists():
        result = read_json(run.file("result.json"), "result")
        for name, text in result.get("selections", {}).items():
            print(f"{name:>14}: {text}")
        _print_benchmark(result.get("benchmark", {"note": "no benchmark metrics recorded"}))
    else:
        print("no result yet (search unfinished: archselect search --resume RUN)")
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
    spec = args.arch.strip()
    if spec.isdigit():
        arch = table.arch_at(int(spec))
    else:
        from .arch import load_architecture

        arch = load_architecture(spec)
    for k, v in table.lookup(arch).items():
        print(f"{k:>20}: {v}")
    return 0


COMMANDS = {"search": cmd_search, "select": cmd_select, "show": cmd_show, "benchmark": cmd_benchmark}

if __name__ == "__main__":
    sys.exit(main())
