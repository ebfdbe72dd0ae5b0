"""Train the learned emergency detector (bots/detector.py) and choose its thresholds on the dev set.

    python -m training.train_detector                      # writes bots/safety_detector.json
    python -m training.train_detector --target-recall 0.99 --out /tmp/detector.json

Features: the loaded base model's mean hidden state after block 15 of each message (``embed``
of the serving backend, llama.cpp by default). The tier (routine / urgent / emergency) is
fitted on the ``train`` sets of ``bots/safety_eval/detector_sets.yaml`` as the mean of
``--members`` small networks (one ReLU layer of ``--hidden`` units, class weights, L2, Adam;
seeds apart; ``--hidden 0``: one linear softmax layer, the v3 recipe), and the red flag on
their emergencies by a linear softmax layer (numpy, full-batch). On the ``dev`` sets: the veto (a rules match is overruled below it; ``--no-veto``:
never) and the emergency threshold are chosen together, the pair with the fewest false alarms
at which the guard (rules unless overruled, OR detector) still reaches ``--target-recall``
(``--veto-choice margin``: the veto at half the lowest P(emergency) of a dev emergency the
rules catch, then the highest threshold that keeps the recall); the urgent threshold likewise
keeps most urgent messages urgent. The ``report`` sets are never read here: ``python -m
bots.safety_eval`` reports them. The features are cached between fits
(``TOP_CACHE_DIR/detector-features``), so a refit embeds only new messages.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bots.backbone_base import BackboneBase
from bots.backends import build_backbone
from bots.base_source import BaseModelSpec
from bots.cli_args import CommandParser
from bots.detector import DETECTOR_FILE, TIERS, DetectorModel, decide
from bots.safety import detect_emergency
from bots.safety_eval import TieredMessage, load_role, set_roles

THRESHOLD_MARGIN = 1e-6
"""Thresholds sit just below the dev score they keep: one message scored alone can differ in the last float bits."""
DEFAULT_BLOCKS = 15
"""Chosen on the dev set (v5, bots/safety_eval/README.md): at the same 0.98 dev recall of the
guard, the v4 recipe gave 0.036 false alarms after block 15, against 0.053 after block 21, 0.058
after 12 and 0.069 after 9 and 6; and block 15 costs 15/30 of a pass (v1 to v4: block 21)."""


DEFAULT_COPY_WEIGHTS: str | None = None
"""The llama.cpp copy's weight format: the base file's own (Q4_1). A Q4_0 copy (``--copy-weights
Q4_0``) runs its pass in 0.57x the time, and a detector fitted on its features kept the dev
false alarms on llama.cpp (0.040 against 0.036), but the transformers backend, which computes the
features in full precision, then raised 0.078 on the dev sets against 0.042: not shipped
(bots/safety_eval/README.md, "A Q4_0 copy")."""


def feature_name(blocks: int | None, copy_weights: str | None = None) -> str:
    where = "the last block" if blocks is None else f"block {blocks}"
    copy = f" (llama.cpp: a {copy_weights} copy of those blocks)" if copy_weights and blocks is not None else ""
    return f"mean over the message tokens of the base model's hidden state after {where}, final norm applied, adapters off{copy}"


@dataclass(frozen=True)
class FitConfig:
    blocks: int | None = DEFAULT_BLOCKS
    """Hidden state after this many blocks (None: the last)."""
    copy_weights: str | None = DEFAULT_COPY_WEIGHTS
    """The truncated copy's weight format on llama.cpp (None: the base file's)."""
    l2: float = 1e-2
    """L2 penalty on the weights (the features are standardised)."""
    steps: int = 600
    learning_rate: float = 0.1
    target_recall: float = 0.98
    """Dev recall of the combined guard (rules OR detector) the emergency threshold must keep."""
    urgent_recall: float = 0.8
    """Share of dev urgent messages (not flagged emergency) the urgent threshold must keep urgent or above."""
    rules_veto: bool = True
    """Let the detector overrule a rules match it is sure is routine."""
    veto_margin: float = 0.5
    """veto_choice "margin": the veto threshold is this fraction of the lowest P(emergency) of a
    dev emergency the rules catch (no such emergency is overruled)."""
    hidden: int = 32
    """Hidden units of each tier network; 0: a linear tier layer. Chosen on dev (detector v4):
    at the same dev recall, 5 networks of 32 cut dev false alarms from 0.096 (linear) to 0.053."""
    members: int = 5
    """Tier networks averaged (seeds 0..members-1): one alone varied from 0.06 to 0.10 dev false alarms."""
    mlp_steps: int = 300
    mlp_l2: float = 1e-3
    mlp_learning_rate: float = 0.05
    cache_features: bool = False
    """Keep the features between fits (TOP_CACHE_DIR/detector-features; the CLI turns it on):
    they depend only on the base, the backend and the block."""
    veto_choice: str = "joint"
    """"joint": the veto and the emergency threshold chosen together, the pair with the fewest
    dev false alarms at the target recall (the veto no higher than the threshold, and never
    above a dev emergency the rules catch); "margin": as above."""


def embed_all(
    backbone: BackboneBase, texts: Sequence[str], blocks: int | None, label: str = "embedding", cache: Path | None = None, copy_weights: str | None = None
) -> np.ndarray:
    """The features of every text; with ``cache`` (a .npz file), those computed before are read
    from it and the new ones added, so a second fit (another l2, a new set) embeds only what is new."""
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            known = dict(zip(stored["keys"].tolist(), stored["rows"], strict=True))
    keys = [hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] for text in texts]
    missing = [(key, text) for key, text in zip(keys, texts, strict=True) if key not in known]
    for key, text in tqdm(missing, desc=label, unit="msg", leave=False):
        known[key] = backbone.embed(text, blocks, copy_weights)
    if cache is not None and missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.tmp-{os.getpid()}.npz")
        np.savez(tmp, keys=np.array(list(known)), rows=np.stack(list(known.values())).astype(np.float32))
        os.replace(tmp, cache)
    return np.stack([known[key] for key in keys]).astype(np.float32)


def feature_cache(backbone: BackboneBase, blocks: int | None, copy_weights: str | None = None) -> Path:
    """Where the features of one base, backend, block and copy format are kept between fits."""
    cache_dir = getattr(backbone, "cache_dir", None) or BaseModelSpec().cache_dir
    copy = f"-{copy_weights.lower()}" if copy_weights and blocks is not None and backbone.backend == "llamacpp" else ""
    return Path(cache_dir) / "detector-features" / f"{backbone.base.fingerprint[:16]}-{backbone.backend}-b{blocks or 'last'}{copy}.npz"


def fit_softmax(features: np.ndarray, labels: np.ndarray, classes: int, config: FitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Class-weighted multinomial logistic regression on standardised features."""
    n, width = features.shape
    weights, bias = np.zeros((width, classes), np.float64), np.zeros(classes, np.float64)
    onehot = np.eye(classes)[labels]
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    sample_weight = (n / (classes * np.maximum(counts, 1)))[labels][:, None]  # rare classes count as much
    x = features.astype(np.float64)
    for _ in range(config.steps):
        logits = x @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        grad = (probs - onehot) * sample_weight / n
        weights -= config.learning_rate * (x.T @ grad + config.l2 * weights)
        bias -= config.learning_rate * grad.sum(axis=0)
    return weights, bias


def fit_tier_network(features: np.ndarray, labels: np.ndarray, classes: int, config: FitConfig, seed: int) -> dict[str, list]:
    """One hidden ReLU layer and a softmax, class-weighted, with L2, by full-batch Adam; the
    weights rounded to 6 significant digits (the file stays small; the thresholds are chosen on
    the rounded network)."""
    rng = np.random.default_rng(seed)
    n, width = features.shape
    x = features.astype(np.float64)
    params = [
        rng.normal(0.0, 1.0 / np.sqrt(width), (width, config.hidden)),
        np.zeros(config.hidden),
        rng.normal(0.0, 1.0 / np.sqrt(config.hidden), (config.hidden, classes)),
        np.zeros(classes),
    ]
    onehot = np.eye(classes)[labels]
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    sample_weight = (n / (classes * np.maximum(counts, 1)))[labels][:, None]
    first, second = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    for step in range(1, config.mlp_steps + 1):
        w1, b1, w2, b2 = params
        hidden = np.maximum(x @ w1 + b1, 0.0)
        logits = hidden @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        grad_logits = (probs - onehot) * sample_weight / n
        grad_hidden = (grad_logits @ w2.T) * (hidden > 0)
        grads = [x.T @ grad_hidden + config.mlp_l2 * w1, grad_hidden.sum(axis=0), hidden.T @ grad_logits + config.mlp_l2 * w2, grad_logits.sum(axis=0)]
        for i, grad in enumerate(grads):
            first[i] = 0.9 * first[i] + 0.1 * grad
            second[i] = 0.999 * second[i] + 0.001 * grad * grad
            params[i] -= config.mlp_learning_rate * (first[i] / (1 - 0.9**step)) / (np.sqrt(second[i] / (1 - 0.999**step)) + 1e-8)
    rounded = [np.array([float(f"{value:.6g}") for value in p.ravel()]).reshape(p.shape) for p in params]
    return dict(zip(("w1", "b1", "w2", "b2"), (p.tolist() for p in rounded), strict=True))


def choose_rules_veto(p_emergency: np.ndarray, rules_hit: np.ndarray, is_emergency: np.ndarray, margin: float) -> float:
    """A P(emergency) under which a rules match is overruled: ``margin`` times the lowest score of
    a dev emergency the rules catch, so that no dev emergency the rules catch is overruled (0: none to go by)."""
    kept = p_emergency[rules_hit & is_emergency]
    return float(margin * kept.min()) if len(kept) else 0.0


def choose_veto_and_threshold(p_emergency: np.ndarray, rules_hit: np.ndarray, tiers: np.ndarray, target: float) -> tuple[float, float]:
    """The (veto, threshold) pair with the fewest false alarms on routine dev messages at which
    rules (unless overruled below the veto) OR (p >= threshold) still catch ``target`` of the
    dev emergencies. Candidate vetoes: 0 and just above each score of a rules match, never above
    the lowest score of a dev emergency the rules catch (so none of those is overruled); ties go
    to the lower veto (the rules stand more often)."""
    is_emergency, is_routine = tiers == "emergency", tiers == "routine"
    best: tuple[float, float, float] | None = None  # (false alarms, veto, threshold)
    # Safety first: no veto may overrule a dev emergency the rules catch (the lowest such score caps it).
    caught = p_emergency[rules_hit & is_emergency]
    cap = float(caught.min()) if len(caught) else 1.0
    # A match stands at p >= veto: to overrule the match scoring s, the veto sits just above s.
    candidates = {0.0} | {float(np.nextafter(score, 1.0)) for score in p_emergency[rules_hit]}
    for veto in sorted(v for v in candidates if v <= cap):
        threshold = choose_emergency_threshold(p_emergency, rules_hit, is_emergency, target, veto)
        veto = min(veto, threshold)
        alarm = (rules_hit & (p_emergency >= veto)) | (p_emergency >= threshold)
        if alarm[is_emergency].mean() < target:
            continue
        false_alarms = float(alarm[is_routine].mean()) if is_routine.any() else 0.0
        if best is None or false_alarms < best[0] - 1e-12:
            best = (false_alarms, veto, threshold)
    if best is None:
        return 0.0, choose_emergency_threshold(p_emergency, rules_hit, is_emergency, target)
    return best[1], best[2]


def choose_emergency_threshold(p_emergency: np.ndarray, rules_hit: np.ndarray, is_emergency: np.ndarray, target: float, veto: float = 0.0) -> float:
    """The highest threshold at which rules (unless overruled below ``veto``) OR (p >= threshold) catch ``target`` of the emergencies."""
    rules_stand = rules_hit & (p_emergency >= veto)
    for threshold in sorted(set(np.round(p_emergency, 6).tolist()) | {1.0}, reverse=True):
        caught = rules_stand | (p_emergency >= threshold)
        if caught[is_emergency].mean() >= target:
            return max(0.0, float(threshold) - THRESHOLD_MARGIN)
    return 0.0


def choose_urgent_threshold(p_urgent_or_worse: np.ndarray, is_urgent: np.ndarray, target: float) -> float:
    values = np.sort(p_urgent_or_worse[is_urgent])
    if not len(values):
        return 0.5
    return max(0.0, float(values[int(np.floor((1 - target) * len(values)))]) - THRESHOLD_MARGIN)


def train_detector(backbone: BackboneBase, train: list[TieredMessage], dev: list[TieredMessage], config: FitConfig, sources: dict[str, str] | None = None) -> tuple[DetectorModel, dict[str, float]]:
    cache = feature_cache(backbone, config.blocks, config.copy_weights) if config.cache_features else None
    x_train = embed_all(backbone, [m.text for m in train], config.blocks, "train", cache, config.copy_weights)
    x_dev = embed_all(backbone, [m.text for m in dev], config.blocks, "dev", cache, config.copy_weights)
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    z_train = (x_train - mean) / scale
    tier_labels = np.array([TIERS.index(m.tier) for m in train])
    if config.hidden > 0:
        members = [fit_tier_network(z_train, tier_labels, len(TIERS), config, seed) for seed in range(config.members)]
        tier_w, tier_b = np.zeros((0, len(TIERS))), np.zeros(0)
    else:
        members = []
        tier_w, tier_b = fit_softmax(z_train, tier_labels, len(TIERS), config)
    flags = sorted({m.red_flag for m in train if m.tier == "emergency" and m.red_flag})
    emergencies = [i for i, m in enumerate(train) if m.tier == "emergency" and m.red_flag]
    flag_w, flag_b = fit_softmax(z_train[emergencies], np.array([flags.index(train[i].red_flag) for i in emergencies]), len(flags), config)
    model = DetectorModel(
        base_fingerprint=backbone.base.fingerprint,
        feature=feature_name(config.blocks, config.copy_weights),
        blocks=config.blocks,
        copy_weights=config.copy_weights if config.blocks is not None else None,
        mean=mean.tolist(),
        scale=scale.tolist(),
        tier_weights=tier_w.tolist(),
        tier_bias=tier_b.tolist(),
        tier_members=members,
        red_flags=flags,
        flag_weights=flag_w.tolist(),
        flag_bias=flag_b.tolist(),
        emergency_threshold=0.5,
        urgent_threshold=0.5,
    )
    probs = model.probabilities(x_dev)
    tiers = np.array([m.tier for m in dev])
    rules_hit = np.array([detect_emergency(m.text) is not None for m in dev])
    if config.rules_veto and config.veto_choice == "joint":
        veto, model.emergency_threshold = choose_veto_and_threshold(probs[:, 2], rules_hit, tiers, config.target_recall)
    else:
        veto = choose_rules_veto(probs[:, 2], rules_hit, tiers == "emergency", config.veto_margin) if config.rules_veto else 0.0
        model.emergency_threshold = choose_emergency_threshold(probs[:, 2], rules_hit, tiers == "emergency", config.target_recall, veto)
    model.rules_veto_threshold = min(veto, model.emergency_threshold)
    model.urgent_threshold = choose_urgent_threshold(probs[:, 1] + probs[:, 2], (tiers == "urgent") & (probs[:, 2] < model.emergency_threshold), config.urgent_recall)
    decided = np.array([decide(dict(zip(TIERS, row.tolist(), strict=True)), model.emergency_threshold, model.urgent_threshold) for row in probs])
    alarm = (rules_hit & (probs[:, 2] >= model.rules_veto_threshold)) | (decided == "emergency")
    figures = {
        "dev_recall_combined": float(alarm[tiers == "emergency"].mean()),
        "dev_false_alarms_combined": float(alarm[tiers == "routine"].mean()),
        "dev_recall_detector": float((decided == "emergency")[tiers == "emergency"].mean()),
        "dev_false_alarms_detector": float((decided == "emergency")[tiers == "routine"].mean()),
        "dev_recall_rules": float(rules_hit[tiers == "emergency"].mean()),
        "dev_false_alarms_rules": float(rules_hit[tiers == "routine"].mean()),
        "dev_rules_overruled": float((rules_hit & (probs[:, 2] < model.rules_veto_threshold)).sum()),
    }
    model.trained_on = {
        "train": f"{(sources or {}).get('train', 'given')} ({len(train)} messages)",
        "dev": f"{(sources or {}).get('dev', 'given')} ({len(dev)} messages)",
        "backend": backbone.backend,
        "fit": {
            "blocks": config.blocks, "copy_weights": config.copy_weights, "l2": config.l2, "steps": config.steps, "learning_rate": config.learning_rate,
            "hidden": config.hidden, "members": config.members if config.hidden else 0,
            "mlp_steps": config.mlp_steps, "mlp_l2": config.mlp_l2, "mlp_learning_rate": config.mlp_learning_rate,
            "target_recall": config.target_recall, "rules_veto": config.rules_veto, "veto_choice": config.veto_choice, "veto_margin": config.veto_margin,
        },
        "dev_figures": figures,
    }
    return model, figures


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m training.train_detector", description="Train the learned emergency detector and choose its thresholds on the dev set.")
    parser.add_argument("--out", type=Path, default=DETECTOR_FILE, help="where to write the detector (default: bots/safety_detector.json)")
    parser.add_argument("--target-recall", type=float, default=FitConfig.target_recall, help="dev recall of rules OR detector to keep (default 0.98)")
    parser.add_argument("--l2", type=float, default=FitConfig.l2)
    parser.add_argument("--hidden", type=int, default=FitConfig.hidden, help=f"hidden units of each tier network (default {FitConfig.hidden}; 0: a linear tier layer)")
    parser.add_argument("--members", type=int, default=FitConfig.members, help=f"tier networks averaged (default {FitConfig.members})")
    parser.add_argument("--no-veto", action="store_true", help="the rules always stand (no rules_veto_threshold)")
    parser.add_argument("--veto-choice", choices=("joint", "margin"), default=FitConfig.veto_choice, help="how the veto is chosen on dev (default joint: with the threshold, fewest false alarms)")
    parser.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, help=f"features after this many blocks (default {DEFAULT_BLOCKS}; 0: the last block)")
    parser.add_argument("--copy-weights", default="base", help="llama.cpp: the truncated copy's weight format, e.g. Q4_0 (default 'base': the base file's)")
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    parser.add_argument("--backend", default=None, help="serving backend that computes the features (default auto)")
    args = parser.parse_args(argv)
    if not 0 < args.target_recall <= 1 or args.l2 < 0:
        parser.error("--target-recall must be in (0, 1] and --l2 >= 0")
    if args.hidden < 0 or args.members < 1:
        parser.error("--hidden must be >= 0 and --members >= 1")
    started = time.perf_counter()
    try:  # the sets first: a broken one is an error before the model loads
        roles = set_roles()
        train, dev = load_role("train"), load_role("dev")
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    backbone = build_backbone(BaseModelSpec.from_env(args.base_model, backend=args.backend))
    sources = {role: " + ".join(f"bots/safety_eval/{name}.jsonl" for name in roles[role]) for role in ("train", "dev")}
    copy_weights = None if args.copy_weights == "base" else args.copy_weights
    config = FitConfig(blocks=args.blocks or None, copy_weights=copy_weights, l2=args.l2, hidden=args.hidden, members=args.members, target_recall=args.target_recall, rules_veto=not args.no_veto, veto_choice=args.veto_choice, cache_features=True)
    model, figures = train_detector(backbone, train, dev, config, sources)
    args.out.write_text(model.to_json(), encoding="utf-8")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s (thresholds: emergency {model.emergency_threshold:.4f}, urgent {model.urgent_threshold:.4f})")
    for name, value in figures.items():
        print(f"  {name}: {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
