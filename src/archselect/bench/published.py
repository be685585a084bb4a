"""The papers' published numbers, each with the protocol that produced it, to print beside a bench's own.

Values are percentages as reported (mean, std; std None where the paper gives one run or no spread). `matches` names
the (optimizer, split, selector) cells of a bench that play the same role, so the report can put them side by side.
Every entry has numbers and a `source` that states them: the paper and table, or the second-hand source that quotes
them (as reference/methods.md §5 records). Numbers with no such source (recollections, tables not available here)
are left out rather than marked. Protocols differ from any CPU proxy: these are CIFAR-10 searches of the full C16 N5
supernet, not Fashion-MNIST on a small one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NB201_COLUMNS = ("cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_valid", "imagenet16_test")
DARTS_COLUMNS = ("cifar10_test_error",)


@dataclass(frozen=True)
class Published:
    method: str
    space: str                                   # nb201 | darts
    protocol: str
    values: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # column -> (mean, std)
    source: str = ""
    matches: tuple[tuple[str, str, str], ...] = ()  # (optimizer, split, selector) cells of ours that correspond; * any
    note: str = ""


NB201_SEARCH = "CIFAR-10 search (train half trains w, valid half α), NB201 supernet C16 N5"

PUBLISHED: tuple[Published, ...] = (
    Published("optimum (best cell in the benchmark)", "nb201", "oracle over all 15,625 cells",
              {"cifar10_valid": (91.61, None), "cifar10_test": (94.37, None), "cifar100_test": (73.51, None),
               "imagenet16_valid": (46.73, None), "imagenet16_test": (47.31, None)},
              "NAS-Bench-201, as quoted in CoLLM-NAS Table 4 (second-hand)"),
    Published("DARTS (2nd order), magnitude", "nb201", f"{NB201_SEARCH}; second-order DARTS; the benchmark paper's run",
              {"cifar10_valid": (39.77, 0.0), "cifar10_test": (54.30, 0.0), "cifar100_test": (15.61, 0.0),
               "imagenet16_valid": (16.43, 0.0), "imagenet16_test": (16.32, 0.0)},
              "NAS-Bench-201 paper, as quoted in CoLLM-NAS Table 4 (second-hand)",
              (("darts", "none", "magnitude"), ("darts-2nd", "none", "magnitude")),
              note="collapses to an all-skip cell; ours is first-order unless the optimizer is darts-2nd"),
    Published("DARTS-PT (perturbation on a DARTS supernet)", "nb201",
              f"{NB201_SEARCH}; first-order DARTS 100 epochs, then 25 fine-tuning epochs (proj_intv 5), acc criterion",
              {"cifar10_test": (88.11, None)}, "DARTS-PT (ICLR 2021 submission) Table 4: test error 11.89; the "
              "maintainer's rerun gives 88.21 / 88.18 (darts-pt issue #6)", (("darts", "none", "perturbation"),)),
    Published("DARTS-PT (fix α, \"blank\" supernet)", "nb201",
              f"{NB201_SEARCH}; α fixed, 100 epochs, then perturbation",
              {"cifar10_test": (93.80, None)}, "DARTS-PT (ICLR 2021 submission) Table 4: test error 6.20",
              (("fixed-alpha", "none", "perturbation"),)),
    Published("SNAS", "nb201", f"{NB201_SEARCH}; SNAS", {
        "cifar10_valid": (91.10, 1.04), "cifar10_test": (92.77, 0.83), "cifar100_test": (69.34, 1.98),
        "imagenet16_valid": (42.84, 1.79), "imagenet16_test": (43.16, 2.64)},
        "as quoted in RZ-NAS Table 2 (second-hand)", (("snas", "none", "magnitude"),)),
    Published("DrNAS", "nb201", f"{NB201_SEARCH}; DrNAS (plain train_search.py on NB201, 100 epochs, per the "
              "authors' replies in DrNAS issues #8 and #9)", {
        "cifar10_valid": (91.55, 0.0), "cifar10_test": (94.36, 0.0), "cifar100_test": (73.51, 0.0),
        "imagenet16_valid": (46.37, 0.0), "imagenet16_test": (46.34, 0.0)},
        "DrNAS official README (xiangning-chen/DrNAS, 'On NAS-Bench-201': test 94.36 ± 0.00, 73.51 ± 0.00, 46.34 ± "
        "0.00); the valid columns as reprinted in GENIUS (arXiv 2304.10970) Table 1 (second-hand)",
        (("drnas", "none", "magnitude"),),
        note="two users report C100 ~70.5-70.9 when rerunning (DrNAS issues #9, #10)"),
    Published("β-DARTS", "nb201", f"{NB201_SEARCH}; β-DARTS (beta-decay regularisation)", {
        "cifar10_valid": (91.55, 0.0), "cifar10_test": (94.36, 0.0), "cifar100_test": (73.51, 0.0),
        "imagenet16_valid": (46.37, 0.0), "imagenet16_test": (46.34, 0.0)},
        "as reprinted in GENIUS (arXiv 2304.10970) Table 1 and RZ-NAS Table 2 (second-hand)", (("beta-darts", "none", "magnitude"),),
        note="the same cell as DrNAS' (GENIUS notes DrNAS, β-DARTS and Λ-DARTS rows are identical)"),
    Published("DARTS−", "nb201", f"{NB201_SEARCH}; DARTS− (auxiliary skip connection, decaying β)", {
        "cifar10_valid": (91.03, 0.44), "cifar10_test": (93.80, 0.40), "cifar100_test": (71.53, 1.51),
        "imagenet16_valid": (44.87, 1.46), "imagenet16_test": (45.12, 0.82)},
        "as reprinted in MathNAS (NeurIPS 2023) Table 8 and CoLLM-NAS Table 4 (second-hand)", (("darts-minus", "none", "magnitude"),)),
    Published("Zero-Cost-PT with NASWOT (ZiCo's re-implementation)", "nb201",
              "untrained NB201 supernet, perturbation with a zero-cost proxy; 5 runs", {
                  "cifar10_test": (93.42, 0.07), "cifar100_test": (70.77, 0.51), "imagenet16_test": (45.11, 0.26)},
              "ZiCo (ICLR 2023) Appendix F.2 Table 8, 'Zero-PT+NASWOT'; ZiCo wrote its own Zero-PT before the "
              "official code was released, and its description differs from that code",
              (("*", "none", "zero-cost"), ("*", "none", "zc-nwot")),
              note="not the authors' own numbers: their NB201 table could not be read here"),
    Published("Zero-Cost-PT with synflow (ZiCo's re-implementation)", "nb201",
              "untrained NB201 supernet, perturbation with a zero-cost proxy; 5 runs", {
                  "cifar10_test": (87.68, 0.16), "cifar100_test": (58.92, 0.17), "imagenet16_test": (32.20, 0.0)},
              "ZiCo (ICLR 2023) Appendix F.2 Table 8, 'Zero-PT+Synflow'", (("*", "none", "zc-synflow"),),
              note="not the authors' own numbers"),
    # DARTS space, CIFAR-10 test error (%) after retraining C36, 20 cells, 600 epochs.
    Published("DARTS (1st order)", "darts", "CIFAR-10 search, C16 8 cells, 50 epochs; retrain C36 20 cells 600 epochs",
              {"cifar10_test_error": (3.00, 0.14)}, "DARTS-PT (ICLR 2021 submission) Table 2, the DARTS row",
              (("darts", "none", "magnitude"),)),
    Published("DARTS+PT (4 seeds; best 2.48)", "darts", "as DARTS, then perturbation + topology selection, 81 tune "
              "epochs", {"cifar10_test_error": (2.61, 0.08)},
              "DARTS-PT (ICLR 2021 submission) Table 2: 2.61 ± 0.08 over 4 seeds, best 2.48",
              (("darts", "none", "perturbation"),)),
    Published("DARTS+PT (fix α)", "darts", "α fixed during the search, then perturbation",
              {"cifar10_test_error": (2.87, None)}, "DARTS-PT (ICLR 2021 submission) Table 4",
              (("fixed-alpha", "none", "perturbation"),)),
    Published("Shapley-NAS (best 2.43)", "darts", "CIFAR-10 search, partial-channel supernet (K=4), 25+25 epochs",
              {"cifar10_test_error": (2.47, 0.04)}, "Shapley-NAS issue #6 quotes 97.53 ± 0.04 % accuracy (error = "
              "100 − accuracy); best 2.43: the Papers with Code entry (second-hand)", (("darts", "none", "shapley"),)),
    Published("GM+DARTS (1st order), released model", "darts", "CIFAR-10 search, splits at epochs 2, 4, 6 into 8 "
              "sub-supernets, successive halving", {"cifar10_test_error": (2.35, None)},
              "GM-NAS README (WS-GM): the released model's 97.65 % accuracy, best over epochs, on the test set",
              (("darts", "gm", "*"),)),
)


def published_for(space: str) -> list[Published]:
    return [p for p in PUBLISHED if p.space == space]


def columns_for(space: str) -> tuple[str, ...]:
    return NB201_COLUMNS if space == "nb201" else DARTS_COLUMNS


def matches(entry: Published, optimizer: str, split: str, selector: str) -> bool:
    return any(all(p in ("*", v) for p, v in zip(m, (optimizer, split, selector))) for m in entry.matches)
