"""Model cards: the ``MODEL_CARD.md`` written beside a model's ``model.json``.

:func:`model_card` for a network trained on log-mel frames
(:mod:`annotate.training.train`), :func:`head_card` for a head on a
backbone (:mod:`annotate.training.heads`): data, licences, settings,
validation figures, use and limits, read from the model's spec.
"""

from __future__ import annotations

import json
import math

from annotate.modelling.model_folder import ModelSpec

#: How an emotion (any non-language) model's temperature was fitted
#: (:func:`annotate.training.calibration.fit_confidence_temperature`).
TOP_LABEL_CALIBRATION = ("so that each recording's top probability matches how often the top "
                         "label is right")


def head_card(spec: ModelSpec) -> str:
    """A model card for a head (data, split, settings, validation figures, limits)."""
    v = spec.metrics.get("validation", {})
    held = spec.metrics.get("heldout", {})
    info = spec.training
    data = info.get("corpora") or "see model.json"
    if not isinstance(data, str):
        data = ", ".join(f"{c['name']} ({c['root']})" for c in data)
    cross = ("" if "*" not in spec.languages else
             "\n**Cross-lingual.** It serves every language without an emotion model of "
             "its own (French among them): no training recording was in those languages, "
             "so expect lower accuracy there than on the corpora it was trained on.\n")
    article = "An" if spec.task[0] in "aeiou" else "A"
    rows = "".join(
        f"| {name} | {r.get('n', '')} | {r.get('uar', float('nan')):.3f} | "
        f"{r.get('accuracy', float('nan')):.3f} | {r.get('ece', float('nan')):.3f} |\n"
        for name, r in held.get("sets", {}).items())
    heldout = (f"\n## Held out ({held.get('split', '')})\n\n| test set | recordings | UAR | "
               f"accuracy | ECE |\n|---|---|---|---|---|\n{rows}" if rows else "")
    switch = (f" Its probabilities are smoothed along each recording with switch "
              f"probability {spec.switch_probability} (fitted on validation sequences)."
              if spec.switch_probability else "")
    cascade = ""
    if spec.cascade is not None:
        c = spec.cascade
        cascade = (f"\n**Cascade.** Where its top probability is below {c.threshold}, the "
                   "segment also goes through Whisper's own language identification (the "
                   "backbone's `language.tflite`), and its probabilities become "
                   f"softmax({c.head_weight} log p_head + {c.whisper_weight} log p_whisper): "
                   f"{c.validation.get('asked', float('nan')):.1%} of the validation segments. "
                   f"Chosen on {c.fitted_on} (`scripts/fit_language_cascade.py`). "
                   "`annotate run --language-id head` runs the head alone.\n")
        if c.context_threshold is not None:
            rows = {row["threshold"]: row for row in c.validation.get("context", [])}
            chosen = rows.get(c.context_threshold, {})
            window = f"{c.context_window_frames * spec.features.hop_s:g} s"
            cascade += (f"\n**Whisper's context.** Where a stretch of a recording (its "
                        f"segments of one language after the smoothing, up to {window} of "
                        f"speech) is still below {c.context_threshold} after the cascade, its "
                        f"speech is joined into one padded {window} window and put to "
                        "Whisper's language identification once; each segment's "
                        "probabilities become "
                        f"softmax(log p + {c.context_weight} log p_context) before the "
                        f"smoothing: {chosen.get('asked', float('nan')):.1%} of the "
                        "validation recordings, mean per-corpus accuracy "
                        f"{rows.get(0.0, {}).get('mean_accuracy', float('nan')):.3f} -> "
                        f"{chosen.get('mean_accuracy', float('nan')):.3f}.\n")
    loco = spec.metrics.get("leave_one_corpus_out")
    if loco:
        figures = "".join(
            f"| {name} | {r['recordings']} | {r['uar']:.3f} | {r['accuracy']:.3f} | "
            f"{r['ece']:.3f} |\n" for name, r in loco.get("corpora", {}).items())
        cascade += (
            "\n**Chosen for transfer.** Each training corpus's states were centred on their "
            "own mean, and the settings were chosen leaving one corpus out: trained on the "
            "others, scored on the one left out in its own language, over the emotions every "
            f"corpus has ({', '.join(loco.get('labels', []))}). The temperature was fitted on "
            "those left-out predictions. `annotate run` centres a run the same way: the "
            "log-probabilities of this model's segments are centred on their mean over the "
            "run, shrunk towards the training mean by "
            f"{spec.run_centring.prior_s:g} s of speech, so a run of a few seconds keeps its "
            "probabilities and a corpus is heard relative to itself. Left out in turn (UAR "
            f"{loco.get('mean_uar', float('nan')):.3f} on average):\n\n"
            "| corpus left out | recordings | UAR | accuracy | ECE |\n|---|---|---|---|---|\n"
            f"{figures}" if spec.run_centring is not None else "")
    if spec.speaker_adaptation is not None:
        a = spec.speaker_adaptation
        gains = "; ".join(f"{name} UAR {r['uar_plain']:.3f} -> {r['uar_adapted']:.3f}"
                          for name, r in a.validation.get("corpora", {}).items())
        cascade += (f"\n**Per speaker.** With `annotate run --speakers`, each speaker's "
                    "log-probabilities are centred on that speaker's mean (the run's mean "
                    f"added back) and divided by {a.temperature:g}, fitted on {a.fitted_on}"
                    f"{': ' + gains if gains else ''}.\n")
    calibrated = ("" if spec.task == "language" else
                  f" (fitted on the out-of-fold predictions, {TOP_LABEL_CALIBRATION})")
    return f"""# {spec.name}

{article} {spec.task} head on the `{info.get('backbone')}` backbone (its folder holds
the encoder's card and licence): it reads the
mean and standard deviation over each speech segment of hidden states
{list(spec.backbone.layers)} and outputs {len(spec.labels)} logits
({', '.join(spec.labels)}), divided by the calibration temperature
{spec.temperature:.3f}{calibrated}.{switch} Serves: {', '.join(spec.languages)}.
{cascade}{cross}
## Data

{data}. Recordings per corpus: {json.dumps(info.get('recordings_per_corpus',
                                                     info.get('recordings', '?')))}.

Licences: {info.get('licences', 'those of the corpora named above')}.
Test speakers: {info.get('test_speakers', 'none held out here: evaluate on other speakers')}.

## Settings (chosen on validation speakers: {info.get('search', {}).get('trials', 0)} trials)

`{json.dumps(info.get('settings'))}`

## Validation ({v.get('split', '')})

| recordings | UAR | accuracy | ECE |
|---|---|---|---|
| {v.get('recordings', '')} | {v.get('uar', float('nan')):.3f} | {v.get('accuracy', float('nan')):.3f} | {v.get('ece', float('nan')):.3f} |
{heldout}
## Limits

Acted emotion corpora are not everyday speech, and labels carry each
corpus' categories. A segment's label is only as good as 3 s of audio allows.
"""


def model_card(spec: ModelSpec) -> str:
    """The ``MODEL_CARD.md`` of a trained model: data, licences, metrics, use, limits."""
    training, metrics = spec.training, spec.metrics
    hyper = training.get("hyperparameters", {})
    split = training.get("split", {})
    corpora = training.get("corpora", [])
    served = ", ".join(spec.languages)
    if spec.languages == ("*",):
        served = ("any language without its own model (`*`): a cross-lingual model, applied "
                  "by `annotate run` to languages it never heard in training (French among "
                  "them when no French model is installed)")
    donor = training.get("initialised_from")
    methods = "; ".join(f"{k}: {v}" for k, v in split.get("methods", {}).items())
    lines = [
        f"# {spec.name}",
        "",
        f"A {spec.task} classifier trained by `annotate train`. Labels: "
        f"{', '.join(spec.labels)}. Languages served: {served}.",
        "",
        "## Data",
        "",
        "| corpus | files used | speakers | licence / terms |",
        "|---|---|---|---|",
        *(f"| {c['name']} ({c['root']}) | {c['files_used']} of {c['files']} | {c['speakers']} "
          f"| {c['licence']} |" for c in corpora),
        "",
        "A model inherits its training data's terms: where any corpus above is "
        "non-commercial (EMOVO, RAVDESS, Att-HACK), so is this model.",
        "",
        f"Split: speaker-independent ({methods}). "
        f"{len(split.get('train_speakers', []))} training speakers, "
        f"{len(split.get('validation_speakers', []))} validation speakers: "
        f"{', '.join(split.get('validation_speakers', []))}.",
        "",
        "## Training",
        "",
        f"{hyper.get('architecture')} network ({training.get('parameters')} parameters, "
        f"options {json.dumps(hyper.get('network', {}))}) on "
        f"{spec.features.segment_s} s log-mel segments ({spec.features.n_mels} bands "
        f"{spec.features.fmin_hz:g}-{spec.features.fmax_hz:g} Hz, "
        f"{spec.features.normalisation} normalisation); "
        + (f"started from the weights of `{donor['name']}` (model.keras SHA-256 "
           f"{donor['keras_sha256'][:12]}...; "
           f"{len(training.get('layers_initialised', []))} layers copied"
           f"{', kept fixed' if donor.get('frozen') else ''}); " if donor else "")
        + f"{training.get('epochs_run')} epochs run, "
        f"best at epoch {training.get('best_epoch')} (early stopping on validation loss); "
        f"batch {hyper.get('batch_size')}, learning rate {hyper.get('learning_rate')}, "
        f"seed {hyper.get('seed')}; augmentation {'on' if hyper.get('augment') else 'off'}; "
        f"{training.get('class_balancing', '')}. Temperature {spec.temperature:.3f} "
        + ("fitted on the validation logits." if spec.task == "language" else
           f"fitted on the validation recordings, {TOP_LABEL_CALIBRATION}."),
        "",
        "## Validation metrics",
        "",
        "Per recording (duration-weighted mean of segment probabilities over speech "
        "segments, as `annotate run` + `annotate summarize` compute them):",
        "",
        f"- accuracy {metrics.get('accuracy', math.nan):.3f}, "
        f"UAR {metrics.get('uar', math.nan):.3f}, "
        f"ECE {metrics.get('ece', math.nan):.3f} "
        f"({metrics.get('validation_data', {}).get('recordings')} recordings)",
    ]
    per_segment = metrics.get("per_segment", {})
    if per_segment:
        lines.append(
            f"- per segment: accuracy {per_segment['accuracy']:.3f}, "
            f"UAR {per_segment['uar']:.3f}, "
            f"ECE {per_segment['ece']:.3f} ({per_segment['n']} segments)"
        )
    recalls = metrics.get("per_class_recall", {})
    if recalls:
        listed = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -"
                           for k, v in recalls.items())
        lines.append(f"- recall per label: {listed}")
    lines += [
        "",
        "The validation speakers are few: these figures are indicative, with wide "
        "error bars. Use `annotate evaluate` on held-out data or with `--protocol loso`.",
        "",
        "## Intended use",
        "",
        f"Labelling speech corpora with {spec.task} per segment for research and corpus "
        "exploration, with the probabilities read as calibrated on the validation data.",
        "",
        "## Limits",
        "",
        "- Acted emotions of a few speakers are not spontaneous emotions; expect "
        "  much lower accuracy on natural speech, other languages, channels and ages."
        if spec.task != "language" else
        "- Trained on read speech of a limited set of speakers and microphones.",
        "- Not for decisions about individuals (hiring, health, policing, credit).",
        "- Calibration holds for data like the validation data, not beyond.",
        "",
    ]
    return "\n".join(lines)
