"""The COCO caption metrics: CIDEr-D, METEOR and ROUGE-L, computed by pycocoevalcap.

pycocoevalcap (1.2) is the Python 3 port of the MS COCO caption evaluation code
(github.com/tylin/coco-caption) that captioning papers report. What each scorer computes:

- ``cider``: **CIDEr-D** (Vedantam et al. 2015), although the class is called ``Cider``:
  tf-idf vectors of 1..4-grams, without stemming, hypothesis weights clipped to the
  reference's (``min``), a Gaussian length penalty (sigma = 6), cosine similarity averaged
  over references and n-gram orders, times 10. The document frequencies come from the
  references **of the evaluated set itself** (coco-caption's "corpus" mode), so a score
  depends on which images are scored: compare CIDEr only between runs scored on the same
  split. With a single image every idf is log(1/1) = 0 and CIDEr is 0. Not bounded by 1
  (a perfect caption typically scores well above 1).
- ``meteor``: METEOR 1.5 (``java -jar meteor-1.5.jar -l en -norm``: exact, stem, synonym and
  paraphrase matches), corpus level -- the jar aggregates the statistics of every image, it
  does not average per-image scores. Needs Java; see below.
- ``rouge_l``: ROUGE-L F-measure with beta = 1.2 per image -- longest common subsequence
  precision and recall, each maximized over the references separately -- averaged over
  images.
- ``coco_bleu_1`` .. ``coco_bleu_4``: pycocoevalcap's BLEU, kept only to check our nltk BLEU
  (``bleu.py``) against it. On the same tokens the two agree within 1e-9 except in two cases,
  pinned by tests/test_coco_metrics.py: an n-gram order with no match at all scores 0 in
  nltk but a small positive number here (pycocoevalcap adds 1e-15 to every match count
  and 1e-9 to every n-gram count), and a hypothesis shorter than n words adds one n-gram to
  the count in nltk but none here.

Tokenization: our own ``vocabulary.words`` (lower case, everything but a-z, 0-9 and
whitespace removed), joined by single spaces, for every metric -- the words the model is
trained on and BLEU is scored on. The COCO evaluation script instead runs the Stanford
PTBTokenizer (a Java subprocess that writes a temporary file into the installed package);
we do not, so that CIDEr-D, ROUGE-L and BLEU need no Java and give the same answer on every
machine. The two tokenizers differ on possessives and contractions ("dog's": PTB keeps
"'s" as a word, we keep "s") and on hyphens ("t-shirt": PTB keeps one word, we split it),
so scores are not digit-for-digit the COCO script's where such words occur (on the 6-image
test fixture, two of whose captions have them, BLEU-4 is 0.441 on our tokens, 0.418 on PTB's,
CIDEr-D 2.30 and 2.26). Our tokens also never contain "|||", the separator of the METEOR
jar's input protocol.

METEOR runs pycocoevalcap's ``Meteor``: one ``java`` process per call (about 10 s to load
the paraphrase table), stopped before the call returns, whether it succeeded or not. When
``java`` is not on PATH, the process fails, or it runs past ``METEOR_TIMEOUT_S``, ``meteor``
is None and ``unavailable`` names it with the reason -- never 0, which would read as a
real (terrible) score.

SPICE is not computed: pycocoevalcap's Spice downloads Stanford CoreNLP models on first use
and these machines have no internet.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from captioning.data.vocabulary import spaced_words

# The whole METEOR call: about 10 s to start plus ~20 ms per image (2-core CPU), so 1800 s
# covers any COCO split; only a hung java process gets near it.
METEOR_TIMEOUT_S = 1800.0


class MetricUnavailable(RuntimeError):
    """A metric could not be computed here (e.g. no Java for METEOR); the message says why."""


CocoInputs = tuple[dict[int, list[str]], dict[int, list[str]]]


def coco_inputs(references: list[list[str]], hypotheses: list[str]) -> CocoInputs:
    """pycocoevalcap's input format: ``({image: [reference, ...]}, {image: [hypothesis]})``.

    references: one list of reference captions per image; hypotheses: one caption per image.
    Images are keyed by position; every caption becomes its ``words`` joined by single spaces.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("caption metrics need at least one captioned image")
    if any(not image_references for image_references in references):
        raise ValueError("every image needs at least one reference caption")
    references_by_image = {
        image: [spaced_words(reference) for reference in image_references]
        for image, image_references in enumerate(references)
    }
    hypothesis_by_image = {image: [spaced_words(hypothesis)] for image, hypothesis in enumerate(hypotheses)}
    return references_by_image, hypothesis_by_image


def cider_d_scores(references: list[list[str]], hypotheses: list[str]) -> tuple[float, np.ndarray]:
    """Corpus CIDEr-D (pycocoevalcap's ``Cider``), document frequencies from these references,
    and (images,) each caption's own CIDEr-D, whose mean it is: what the paired bootstrap of
    ``make compare`` resamples (paired_bootstrap.py)."""
    score, image_scores = Cider().compute_score(*coco_inputs(references, hypotheses))
    return float(score), np.asarray(image_scores, dtype="float64")


def rouge_l_score(references: list[list[str]], hypotheses: list[str]) -> float:
    """ROUGE-L F-measure (beta 1.2) averaged over images, in [0, 1]."""
    score, _ = Rouge().compute_score(*coco_inputs(references, hypotheses))
    return float(score)


def coco_bleu_scores(references: list[list[str]], hypotheses: list[str]) -> dict[str, float]:
    """pycocoevalcap's corpus BLEU-1..4 ("closest" reference length) as ``coco_bleu_1`` .. ``coco_bleu_4``."""
    scores, _ = Bleu(4).compute_score(*coco_inputs(references, hypotheses), verbose=0)
    return {f"coco_bleu_{order}": float(score) for order, score in enumerate(scores, start=1)}


def meteor_score(references: list[list[str]], hypotheses: list[str]) -> float:
    """Corpus METEOR 1.5 in [0, 1]; raises MetricUnavailable when Java is missing or fails."""
    references_by_image, hypothesis_by_image = coco_inputs(references, hypotheses)
    if shutil.which("java") is None:
        raise MetricUnavailable("java is not on PATH (METEOR runs the Meteor 1.5 jar)")
    try:
        scorer = Meteor()  # starts `java -jar meteor-1.5.jar ... -stdio`
    except OSError as error:
        raise MetricUnavailable(f"could not start java for METEOR: {error}") from error
    timed_out = threading.Event()

    def stop_on_timeout() -> None:
        timed_out.set()
        scorer.meteor_p.kill()  # the blocked read in compute_score then sees end of file and raises

    watchdog = threading.Timer(METEOR_TIMEOUT_S, stop_on_timeout)
    watchdog.start()
    failure = None
    try:
        score, _ = scorer.compute_score(references_by_image, hypothesis_by_image)
    except (OSError, ValueError) as error:  # broken pipe, or a line that is not a number (end of file)
        failure = error
    finally:
        watchdog.cancel()
        java_errors = stop_meteor(scorer)
    if timed_out.is_set():
        raise MetricUnavailable(f"METEOR ran past {METEOR_TIMEOUT_S:g} s and was stopped")
    if failure is not None:
        detail = f"; java said: {java_errors}" if java_errors else ""
        raise MetricUnavailable(f"the METEOR java process failed ({failure!r}){detail}") from failure
    return float(score)


def stop_meteor(scorer: Meteor) -> str:
    """Ends ``scorer``'s java process and closes its pipes; returns the end of its stderr.

    pycocoevalcap's ``Meteor.__del__`` does the same, but only whenever the object is collected,
    and it first takes ``scorer.lock``, which ``compute_score`` leaves held when it raises, so
    a failed scorer would hang the garbage collector. Afterwards ``__del__`` finds nothing to do.
    """
    process = scorer.meteor_p
    process.kill()
    process.wait()
    try:
        process.stdin.close()
    except OSError:  # flushing input the dead process never read
        pass
    process.stdout.close()
    java_errors = process.stderr.read().decode(errors="replace").strip()
    process.stderr.close()
    if scorer.lock.locked():
        scorer.lock.release()
    return java_errors[-500:]


def coco_caption_scores(references: list[list[str]], hypotheses: list[str]) -> dict:
    """CIDEr-D, METEOR, ROUGE-L and pycocoevalcap's BLEU-1..4 of one caption per image.

    references: one list of reference captions per image; hypotheses: one caption per image.
    Returns ``{"cider", "image_cider", "meteor", "rouge_l", "coco_bleu_1".."coco_bleu_4",
    "unavailable"}``: floats, except ``image_cider`` (images,), each caption's CIDEr-D, and
    ``meteor``, which is None when it could not be computed; ``unavailable`` lists
    ``{"metric": name, "reason": why}`` for every such None (empty when all were computed).
    """
    cider, image_cider = cider_d_scores(references, hypotheses)
    scores = {
        "cider": cider,
        "image_cider": image_cider,
        "meteor": None,
        "rouge_l": rouge_l_score(references, hypotheses),
        **coco_bleu_scores(references, hypotheses),
    }
    unavailable = []
    try:
        scores["meteor"] = meteor_score(references, hypotheses)
    except MetricUnavailable as error:
        unavailable.append({"metric": "meteor", "reason": str(error)})
    return {**scores, "unavailable": unavailable}
