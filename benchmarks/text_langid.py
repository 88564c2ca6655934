"""Language identification under a memory budget: a frontier of budgeted hashed n-gram
models (8-bit tables, float for comparison) against a character CNN trained on the same
splits (the large reference) and the offline peer identifiers.

Per budget and seed: train (epoch chosen on the validation split carved from train), score
on the test split, measure bytes, FLOPs of the perceptron, latency per sentence (raw text
in, one sentence per call, one thread) and sentences per second (batches of 256). The peers
(langid, langdetect, lingua) are restricted to the 19 languages, scored on the same test
sentences and timed the same way; a peer that is not installed is skipped and named. The
results file ends with the targets, met or not.

    python benchmarks/text_langid.py --data-dir ../shared/data [--budgets ...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import add_split_flags, log, results_header, splits_from_args, write_results
from _text import mean_sd, with_superseded

from frugalnn.methods.text.data import labelled_texts
from frugalnn.methods.text.recipe import NgramConfig, latency_per_item, run_ngram, throughput
from frugalnn.methods.text.references import ReferenceConfig, train_reference

# Peer codes for the dataset's labels (pt-br -> pt, nb -> no in langid/langdetect).
LINGUA = {"cs": "CZECH", "da": "DANISH", "de": "GERMAN", "en": "ENGLISH", "es": "SPANISH",
          "fi": "FINNISH", "fr": "FRENCH", "hu": "HUNGARIAN", "it": "ITALIAN",
          "ja": "JAPANESE", "nb": "BOKMAL", "nl": "DUTCH", "pl": "POLISH",
          "pt-br": "PORTUGUESE", "ru": "RUSSIAN", "sv": "SWEDISH", "tr": "TURKISH",
          "uk": "UKRAINIAN", "zh": "CHINESE"}


def _iso(label: str) -> str:
    return {"pt-br": "pt", "nb": "no"}.get(label, label)


def peers(classes: list[str]) -> dict[str, tuple[object, int]]:
    """name -> (predict(list[str]) -> list[label], model bytes) for each installed peer."""
    out: dict[str, tuple[object, int]] = {}
    back = {_iso(c): c for c in classes}
    try:
        import langid as lid
        from langid.langid import LanguageIdentifier
        from langid.langid import model as lid_model

        ident = LanguageIdentifier.from_modelstring(lid_model, norm_probs=False)
        ident.set_languages([_iso(c) for c in classes])
        size = len(lid_model)  # the packed model string shipped in the package
        out["langid.py 1.1.6"] = (lambda xs: [back.get(ident.classify(x)[0], "?")
                                              for x in xs], size)
        del lid
    except ImportError:
        log("peer langid not installed: skipped")
    try:
        import langdetect
        from langdetect import DetectorFactory, detector_factory

        DetectorFactory.seed = 0
        detector_factory.init_factory()
        factory = detector_factory._factory
        keep = [_iso(c) if c != "zh" else "zh-cn" for c in classes]
        prof = Path(langdetect.__file__).parent / "profiles"
        size = sum((prof / k).stat().st_size for k in keep if (prof / k).exists())

        def detect(xs: list[str]) -> list[str]:
            res = []
            for x in xs:
                d = factory.create()
                d.append(x)
                try:
                    probs = {p.lang: p.prob for p in d.get_probabilities()}
                    cand = {k: probs.get(k, 0.0) for k in keep}
                    best = max(cand, key=cand.get)
                    res.append(back.get("zh" if best == "zh-cn" else best, "?")
                               if cand[best] > 0 else "?")
                except Exception:  # langdetect raises on text without features
                    res.append("?")
            return res
        out["langdetect 1.0.9"] = (detect, size)
    except ImportError:
        log("peer langdetect not installed: skipped")
    try:
        import lingua
        from lingua import Language, LanguageDetectorBuilder

        langs = [getattr(Language, LINGUA[c]) for c in classes]
        det = LanguageDetectorBuilder.from_languages(*langs).with_preloaded_language_models() \
            .build()
        inv = {getattr(Language, v): k for k, v in LINGUA.items()}
        root = Path(lingua.__file__).parent
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        out["lingua 2.1.1"] = (lambda xs: [inv.get(det.detect_language_of(x), "?")
                                           for x in xs], size)
    except ImportError:
        log("peer lingua not installed: skipped")
    return out


def _reference(splits: object, a: argparse.Namespace, texts: list[str]) -> dict[str, object]:
    """The character CNN trained on the same splits, ``--seeds`` seeds."""
    accs, lat, sps, nbytes, epochs = [], [], [], 0, []
    for seed in range(a.seeds):
        cfg = ReferenceConfig(task="langid", epochs=a.reference_epochs, seed=seed,
                              channels=a.reference_channels, max_chars=a.reference_chars)
        ref = train_reference(splits.train, cfg, val_data=splits.val)  # type: ignore[attr-defined]
        accs.append(100 * ref.accuracy(splits.test))  # type: ignore[attr-defined]
        if not a.no_timing:
            lat.append(latency_per_item(ref.predict, texts[:200])["median_ms"])
            sps.append(throughput(ref.predict, texts[:200] * 4))
        nbytes, epochs = ref.nbytes(), epochs + [ref.chosen_epoch]
        log(f"reference seed {seed}: {accs[-1]:.2f} %, {nbytes} B, epoch {ref.chosen_epoch}")
    return {"acc": accs, "lat": lat, "sps": sps, "bytes": nbytes, "epochs": epochs,
            "config": cfg.to_dict()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="langid")
    p.add_argument("--budgets", default="16000,32000,100000,250000,1000000")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--reference-epochs", type=int, default=4,
                   help="epochs of the character CNN reference (0: skip it)")
    p.add_argument("--reference-channels", type=int, default=256,
                   help="channels per convolution width of the character CNN")
    p.add_argument("--reference-chars", type=int, default=256,
                   help="characters the character CNN reads per sentence")
    p.add_argument("--peer-limit", type=int, default=None,
                   help="test sentences the peers are scored on (default: all, as ours)")
    p.add_argument("--no-timing", action="store_true",
                   help="leave the latency and throughput cells out (a run that cannot hold "
                        "the timing lock: accuracy and bytes only)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "text-runs"))
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "text.md"))
    a = p.parse_args()
    torch.set_num_threads(1)
    splits = splits_from_args(a)
    texts, labels, classes = labelled_texts(splits.test)
    rows = []
    for budget in [int(b) for b in a.budgets.split(",")]:
        acc8, accf, lat, sps = [], [], [], []
        for seed in range(a.seeds):
            cfg = NgramConfig(budget_bytes=budget, epochs=a.epochs, seed=seed,
                              latency_sentences=200)
            run = run_ngram(cfg, splits, Path(a.out) / f"langid-{budget}-s{seed}", force=True,
                            threads=1)
            f = run.figures
            acc8.append(100 * f["accuracy"]["test"]["8bit"])
            accf.append(100 * f["accuracy"]["test"]["float"])
            lat.append(f["latency_per_sentence"]["median_ms"])
            sps.append(f["sentences_per_second"])
            log(f"budget {budget} seed {seed}: {acc8[-1]:.2f} % (8-bit) {accf[-1]:.2f} % "
                f"(float), {f['bytes']} B")
        rows.append((budget, f, acc8, accf, lat, sps))
    ref = _reference(splits, a, texts) if a.reference_epochs > 0 else None

    def timed(xs: list[float], digits: int = 2) -> str:
        return mean_sd(xs, digits) if xs and not a.no_timing else "not timed"

    lines = [results_header("Language ID under a memory budget (hashed n-grams, 19 languages)",
                            notes=f"{a.seeds} seeds per model (mean ± sd), epoch chosen on "
                                  f"the validation split; test = all {len(texts)} test "
                                  "sentences, the same for our models, the reference and "
                                  "the peers" + ("; timings not measured (--no-timing: "
                                                 "run without the timing lock)"
                                                 if a.no_timing else "")),
             "", "| model | bytes (8-bit / float) | MLP FLOPs | test acc 8-bit (%) "
             "| test acc float (%) | 8-bit − float (pt) | tables 8-bit / float (B) | "
             "latency/sentence (ms) | sentences/s |", "|---|---|---|---|---|---|---|---|---|"]
    for budget, f, acc8, accf, lat, sps in rows:
        diff = [x - y for x, y in zip(acc8, accf)]
        emb = f["embedding_bytes"]
        lines.append(f"| n-gram, budget {budget} B | {f['bytes']} / {f['float_bytes']} | "
                     f"{f['mlp_flops']} | {mean_sd(acc8)} | {mean_sd(accf)} | {mean_sd(diff)} | "
                     f"{emb['8bit']} / {emb['float']} | {timed(lat)} | {timed(sps, 0)} |")
    if ref is not None:
        c = ref["config"]
        lines.append(f"| char CNN reference (float32) | — / {ref['bytes']} | — | — | "
                     f"{mean_sd(ref['acc'])} | — | — | {timed(ref['lat'])} | "
                     f"{timed(ref['sps'], 0)} |")
        lines += ["", f"Reference: character CNN, {c['char_buckets']} code-point buckets x "
                  f"{c['char_dim']}, convolutions of widths {c['widths']} x {c['channels']} "
                  f"channels, max over time, linear; first {c['max_chars']} characters; "
                  f"{a.reference_epochs} epochs, Adam lr {c['lr']}, epoch chosen on validation "
                  f"(chosen: {ref['epochs']})."]

    pick = list(range(len(texts)))
    if a.peer_limit is not None and a.peer_limit < len(texts):
        gen = torch.Generator().manual_seed(a.seed + 1)
        pick = torch.randperm(len(texts), generator=gen)[:a.peer_limit].tolist()
    lines += ["", f"Peers, restricted to the 19 languages, on {len(pick)} test sentences "
              "(one sentence per call, one thread; the sentences/s of our models and the reference "
              "above are batches of 256):", "",
              "| peer | model bytes (on disk) | test acc (%) | latency/sentence (ms) | "
              "sentences/s |", "|---|---|---|---|---|"]
    sub, gold = [texts[i] for i in pick], [classes[int(labels[i])] for i in pick]
    peer_acc: dict[str, tuple[float, int]] = {}
    for name, (fn, size) in peers(classes).items():
        t0 = time.perf_counter()
        pred = fn(sub)  # type: ignore[operator]
        secs = time.perf_counter() - t0
        acc = 100 * sum(p == g for p, g in zip(pred, gold)) / len(gold)
        lat = [] if a.no_timing else [latency_per_item(fn, sub[:100])["median_ms"]]
        peer_acc[name] = (acc, size)
        log(f"{name}: {acc:.2f} %")
        lines.append(f"| {name} | {size} | {acc:.2f} | {timed(lat, 3)} | "
                     f"{timed([] if a.no_timing else [len(sub) / secs], 0)} |")
    lines += ["", "Not installable offline: gcld3 3.0.13 and pycld3 0.22 (both need the "
              "protobuf compiler `protoc` to build).", "", "Targets:", ""]
    lines += _verdicts(rows, ref, peer_acc)
    write_results(a.results, with_superseded(a.results, "\n".join(lines) + "\n"))


def _verdicts(rows: list, ref: dict | None, peer_acc: dict[str, tuple[float, int]]
              ) -> list[str]:
    """Met / not met for the two targets, from the mean test accuracies (8-bit)."""
    out = []
    mean = {b: statistics.mean(acc8) for b, _f, acc8, *_ in rows}
    nbytes = {b: f["bytes"] for b, f, *_ in rows}
    if ref is not None:
        r = statistics.mean(ref["acc"])
        fits = {b: m for b, m in mean.items() if nbytes[b] <= 100_000}
        if fits:
            b = max(fits, key=fits.get)
            gap = r - fits[b]
            out.append(f"- within 1 pt of the reference ({r:.2f} %) at <= 100 KB: "
                       f"{'met' if gap <= 1 else 'not met'} ({b} B: {fits[b]:.2f} %, "
                       f"{-gap:+.2f} pt vs the reference, {ref['bytes'] / nbytes[b]:.0f}x "
                       "smaller).")
    if peer_acc:
        name = max(peer_acc, key=lambda k: peer_acc[k][0])
        acc, size = peer_acc[name]
        fits = {b: m for b, m in mean.items() if nbytes[b] <= size / 10}
        if fits:
            b = max(fits, key=fits.get)
            out.append(f"- beat the best peer ({name}, {acc:.2f} % at {size} B) at <= 1/10 of "
                       f"its size: {'met' if fits[b] > acc else 'not met'} ({b} B: "
                       f"{fits[b]:.2f} %, {fits[b] - acc:+.2f} pt, 1/{size / nbytes[b]:.0f} "
                       "of its size).")
    return out


if __name__ == "__main__":
    main()
