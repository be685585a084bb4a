"""The `archselect` command: a thin layer over the pipeline (pipeline/), one subcommand per stage, each reading and
writing a run directory; it parses, calls one documented function and prints.

Errors a user can cause end in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from . import logs, pipeline
from .version import __version__
from .arch import edge_label, load_architecture, parse_index
from .errors import UserError
from .evaluate.benchmark import IMPORT_HINT, NB201Table, find_table, import_table
from .evaluate.lookup import benchmark_metrics
from .executors import EXECUTORS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default prints the whole usage first)
        where = self.prog.removeprefix("archselect").strip()
        raise UserError(f"{where}: {message}" if where else message)


def _add_common(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")


def _add_executor(p: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    """--executor and --ray-address, the same for every command that hands out independent jobs."""
    p.add_argument("--executor", default=default, choices=EXECUTORS, help=f"engine for {what}")
    p.add_argument("--ray-address", help="Ray cluster to run on (auto, HOST:6379, ray://HOST:10001); default: a "
                   "local Ray instance")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="archselect", description="Differentiable NAS with swappable architecture selection: "
                     "search a supernet, then compare selectors on it.")
    parser.add_argument("--version", action="version", version=f"archselect {__version__}")
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
    p.add_argument("--tensorboard", action="store_true", help="also write per-epoch scalars and softmax(α) per edge "
                   "to RUN/tb/ (logging.tensorboard=true; needs archselect[tensorboard])")
    _add_executor(p, "the independent jobs of --seeds and --split: sequential (default) or ray", "sequential")
    _add_common(p, "search.epochs=10 space.C=16")

    p = sub.add_parser("select", help="run selectors on the supernet of a finished search")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--selector", required=True, help="comma-separated selectors, e.g. magnitude,perturbation")
    p.add_argument("--workers", type=int, metavar="N", help="split the Shapley permutations and the perturbation candidates over "
                   "N workers, with the same results (default: select.workers, 1); under torchrun every rank is one")
    _add_executor(p, "the --workers: sequential (in turn, here; for checking) or ray (default: select.executor)")
    _add_common(p, "select.options.shapley.permutations=20")

    p = sub.add_parser("train", help="retrain an architecture from scratch; report test accuracy, params, FLOPs")
    # ARCH and the overrides are both positional: write the options before ARCH or after the overrides
    p.add_argument("arch", metavar="ARCH", help="architecture: a JSON file (result.json, selections/NAME.json), "
                   "a NAS-Bench-201 string or a DARTS genotype")
    p.add_argument("--config", help="YAML config; its train section (default: the NAS-Bench-201 protocol)")
    p.add_argument("--out", help="run directory to create (default: runs/train-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN", help="continue the retraining in RUN after a kill (same ARCH)")
    p.add_argument("--seed", type=int)
    _add_common(p, "train.epochs=50 train.C=16")

    p = sub.add_parser("split", help="gradient-matching scores of a trained supernet: which edge GM-NAS would "
                       "split, into which groups (writes RUN/split-scores.json)")
    p.add_argument("run", metavar="RUN")
    _add_common(p, "split.batches=8")

    p = sub.add_parser("import", help="a supernet trained elsewhere (an official checkpoint) as a run directory, "
                       "to select from, report and show")
    p.add_argument("format", metavar="FORMAT", help="darts-pt-nb201 (DARTS-PT's and GM-NAS' NAS-Bench-201 supernet), "
                   "darts-pt-darts (DARTS-PT's DARTS spaces s1-s5), darts (original DARTS model_search.py)")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the .pth/.pt file (read with weights_only=True)")
    p.add_argument("--out", help="run directory to create (default: runs/import-TIMESTAMP)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="the data it was trained on and format options, e.g. data.dataset=cifar10 "
                   "search.optimizer=fixed-alpha alpha=alpha.pt search_space=s3")

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
        logs.setup()
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"archselect: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("archselect: interrupted", file=sys.stderr)
        return 130


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--selector needs at least one selector name")
    return names


def _print_benchmark(bench: dict) -> None:
    print(pipeline.stages.benchmark_line(bench))


# -- search ---------------------------------------------------------------------------------------------------------

def cmd_search(args) -> int:
    selectors = _names(args.selector) if args.selector else None
    if args.tensorboard:
        args.overrides = [*args.overrides, "logging.tensorboard=true"]
    if args.seeds or (args.resume and pipeline.Run(args.resume).is_job_set()):
        return _search_seeds(args, selectors)
    run = pipeline.search(args.config, args.out, overrides=args.overrides, resume=args.resume, selectors=selectors,
                          seed=args.seed, device=args.device, split=args.split, executor=args.executor,
                          ray_address=args.ray_address)
    result = run.read_result() if run.exists() else None
    if result is None:  # a torchrun rank other than 0
        return 0
    if "split" in result:
        split = result["split"]
        print(f"architecture ({result['selector']}, {split['rule']} choice among {split['leaves']} sub-supernets): "
              f"{result['selections'][result['selector']]}")
        _print_split(result)
    else:
        print(f"architecture ({result['selector']}): {result['selections'][result['selector']]}")
        _print_benchmark(result["benchmark"])
        if len(result["selections"]) > 1:
            print(pipeline.compare(run))
    return 0


def _search_seeds(args, selectors) -> int:
    """--seeds: independent searches, one per seed, into RUN/seed-N/; --resume RUN reruns the unfinished ones."""
    if args.resume:
        if args.config or args.out or args.seeds or args.overrides or args.seed is not None or args.selector:
            raise UserError("--resume of a multi-seed run takes everything from RUN/jobs.json; drop the other options")
    elif args.seed is not None:
        raise UserError("--seeds starts a new set of searches: drop --seed and --resume")
    overrides = [*args.overrides, *([f"split.method={args.split}"] if args.split else [])]
    results = pipeline.search_seeds(args.config, args.out, seeds=args.seeds, overrides=overrides,
                                    resume=args.resume, selectors=selectors, device=args.device,
                                    executor=args.executor, ray_address=args.ray_address)
    for r in results:
        print(f"{r.id:>10}: {r.value['architecture'] if r.ok else 'FAILED ' + str(r.error)}")
    failed = [r for r in results if not r.ok]
    if failed:
        root = args.resume or args.out
        print(f"archselect: {len(failed)} of {len(results)} jobs failed (details in "
              f"{pipeline.Run(root).summary_file}); rerun them with: archselect search --resume {root}",
              file=sys.stderr)
        return 1
    return 0


def _print_split(result: dict) -> None:
    split = result["split"]
    for name, text in result["selections"].items():
        chosen = split["per_selector"][name]
        print(f"{name:>14}: {text}  (sub-supernet {chosen['leaf']}, {split['rule']} choice)")
        _print_benchmark(chosen["benchmark"])


# -- select -----------------------------------------------------------------------------------------------------------

def cmd_select(args) -> int:
    """Under torchrun rank 0 selects and writes while the other ranks compute shares of its evaluations."""
    selections = pipeline.select(args.run, _names(args.selector), overrides=args.overrides, workers=args.workers,
                                 executor=args.executor, ray_address=args.ray_address, device=args.device)
    if not selections:  # a torchrun rank other than 0
        return 0
    run = pipeline.as_run(args.run)
    if run.is_split():
        _print_split(run.read_result())
        return 0
    benchmark = run.config.benchmark
    for name, s in selections.items():
        print(f"{name:>14}: {s.architecture}")
        _print_benchmark(benchmark_metrics(s.architecture, benchmark))
    if len(selections) > 1:
        print(pipeline.compare(selections, benchmark))
    return 0


# -- split, show, train -----------------------------------------------------------------------------------------------

def cmd_split(args) -> int:
    record = pipeline.split(args.run, overrides=args.overrides, device=args.device)
    for c in record["candidates"]:
        mark = "*" if (c["cell_type"], c["edge"]) == (record["cell_type"], record["edge"]) else " "
        groups = " | ".join("{" + ", ".join(g) + "}" for g in c["groups"])
        edge = edge_label(c["edge"], *c["nodes"])
        print(f"{mark} {c['cell_type']} {edge + ':':<15} cut {c['cut']:.3f}  within {c['within']:.3f}  {groups}")
    print(f"* the edge split by the {record['criterion']} criterion; distances in "
          f"{pipeline.as_run(args.run).split_scores_file}")
    return 0


def cmd_import(args) -> int:
    run = pipeline.import_checkpoint(args.format, args.checkpoint, args.out, overrides=args.overrides)
    print(f"{run.path}: select with  archselect select {run.path} --selector magnitude,perturbation,shapley,influence")
    return 0


def cmd_show(args) -> int:
    print(pipeline.show(args.run))
    return 0


def cmd_train(args) -> int:
    pipeline.train(args.arch, args.config, args.out, resume=args.resume, overrides=args.overrides, seed=args.seed,
                   device=args.device)
    return 0


# -- benchmark --------------------------------------------------------------------------------------------------------

def cmd_benchmark(args) -> int:
    if args.action == "import":
        path = import_table(args.path)
        table = NB201Table.load(path)
        print(f"imported {len(table)} architectures into {path}")
        return 0
    table = find_table(args.table)
    if table is None:
        raise UserError(IMPORT_HINT)
    spec = args.arch.strip()
    index = parse_index(spec)  # ASCII digits only (str.isdigit also takes '²', '٣')
    arch = table.arch_at(index) if index is not None else load_architecture(spec)
    for k, v in table.lookup(arch).items():
        accuracy = k.endswith(("_valid", "_test")) and isinstance(v, float)  # the table's accuracies are percent
        print(f"{k:>20}: {f'{v:.2f}%' if accuracy else v}")
    return 0


# -- bench, report ----------------------------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    out, failed = pipeline.run_bench(args.config, args.out, overrides=args.overrides, executor=args.executor,
                                 ray_address=args.ray_address, device=args.device, report=not args.no_report)
    if not args.no_report:
        print(f"report: {out.report_page}")
    print(f"tables: {out.results_md}, {out.results_csv}")
    if failed:
        for r in failed:
            print(f"{r.id}: FAILED {r.error}", file=sys.stderr)
        print(f"archselect: {len(failed)} supernet groups failed (details in {out.summary_file}); rerun the same "
              f"command to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    for path in pipeline.report(args.run, args.engine):
        print(path)
    return 0


COMMANDS = {"search": cmd_search, "select": cmd_select, "split": cmd_split, "show": cmd_show, "import": cmd_import,
            "benchmark": cmd_benchmark, "bench": cmd_bench, "train": cmd_train, "report": cmd_report}

if __name__ == "__main__":
    sys.exit(main())
