"""The automatic-speech-recognition pipeline's side of :mod:`whisper_at.integrations.transformers`.

The pipeline runs ``preprocess`` (audio -> one item, or one item per chunk with
``chunk_length_s``), ``_forward`` (a batch of items -> ``model.generate``) and ``postprocess``
(all items of one input -> its result dict). Each is wrapped on the pipeline object (instance
attributes; the class is untouched):

- ``preprocess`` adds ``at_span = (input key, offset, samples, chunked)`` to every item: the
  offset of a chunk (in samples) follows from the pipeline's own chunk metadata, its ``stride``
  ``(samples, left, right)``: chunk k+1 starts ``samples_k - left_k+1 - right_k`` after chunk k.
  The samples of an unchunked input are those the feature extractor was given (noted by a proxy
  set as the pipeline's feature extractor while ``preprocess`` runs).
- ``_forward`` tells the model's tagging state the frames of audio in each item before
  ``generate`` runs, then feeds the windows that ``generate`` encoded to the input's tagger: a
  chunk's window is placed at its offset (``ChunkTagger.add_window(offset / 160 + seek, ...)``);
  an unchunked input (one window, or transformers' long-form algorithm) is tagged whole.
- ``postprocess`` takes ``at_span`` off the items (transformers would copy unknown keys into the
  result) and adds ``audio_tag`` and ``at_time_res`` to the result.

Items flow through pad_collate and the pipeline's batch unrolling unchanged: ``at_span`` is a
tuple of ints (a list of them for a batch).
"""

import itertools
from typing import Dict, Union

from torch import Tensor

from .hf_windows import N_FRAMES, GrowingTagger, run_inference

SPAN = "at_span"
HOP = 160  # samples per mel frame
_METHODS = ("preprocess", "_forward", "postprocess")


class _NotingExtractor:
    """The pipeline's feature extractor, noting the length of the waveform it is given."""

    def __init__(self, extractor):
        self._extractor = extractor
        self.length = None

    def __call__(self, raw, *args, **kwargs):
        self.length = len(raw) if getattr(raw, "ndim", None) == 1 else None
        return self._extractor(raw, *args, **kwargs)

    def __getattr__(self, name):
        if name == "_extractor":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self._extractor, name)


class PipelineTagging:
    """The wrappers of one pipeline and the tags of the inputs it is working on."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.own = {name: pipe.__dict__.get(name) for name in _METHODS}  # instance attributes
        self.preprocess_fn = pipe.preprocess
        self.forward_fn = pipe._forward
        self.postprocess_fn = pipe.postprocess
        self.keys = itertools.count()
        self.open: Dict[int, Union[GrowingTagger, Tensor]] = {}  # input key -> its tags

    def _model_state(self):
        from .transformers import tagging_state

        return tagging_state(self.pipe.model)

    def preprocess(self, inputs, *args, **params):
        chunked = bool(params.get("chunk_length_s"))
        key = next(self.keys)
        extractor = self.pipe.feature_extractor
        noting = _NotingExtractor(extractor)
        items = self.preprocess_fn(inputs, *args, **params)
        offset, previous = 0, None
        while True:
            self.pipe.feature_extractor = noting  # read by preprocess when it runs
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self.pipe.feature_extractor = extractor
            samples = noting.length
            if chunked:
                stride = tuple(int(v) for v in item["stride"])
                if previous is not None:
                    offset += previous[0] - stride[1] - previous[2]
                previous, samples = stride, stride[0]
            item[SPAN] = (key, offset, samples, chunked)
            yield item

    def forward(self, model_inputs, *args, **params):
        state = self._model_state()
        spans = model_inputs.get(SPAN)
        if state is None or spans is None:
            return self.forward_fn(model_inputs, *args, **params)
        spans = spans if isinstance(spans, list) else [spans]
        chunked = spans[0][3]
        frames = [None if n is None else min(n // HOP, N_FRAMES) if chunked else n // HOP
                  for _, _, n, _ in spans]  # fmt: skip
        with state.expecting(frames, keep=chunked):
            out = self.forward_fn(model_inputs, *args, **params)
        call = state.last_call()
        if call is None or not call.tagged:
            return out
        for b, (key, offset, _, _) in enumerate(spans):
            if not chunked:
                self.open[key] = call.results()[b]["audio_tag"]
                continue
            tagger = self.open.setdefault(key, GrowingTagger(state.head, state.at_time_res))
            start = round(offset / HOP)
            for (seek, valid), pooled in zip(call.windows[b], call.pooled[b]):
                tagger.add_window(start + seek, pooled, valid)
        return out

    def postprocess(self, model_outputs, *args, **params):
        spans = [output.pop(SPAN, None) for output in model_outputs]
        result = self.postprocess_fn(model_outputs, *args, **params)
        state = self._model_state()
        if not spans or any(span is None for span in spans) or state is None:
            return result
        tags = self.open.pop(spans[0][0], None)
        if isinstance(tags, GrowingTagger):
            samples = max(offset + n for _, offset, n, _ in spans)
            tags = run_inference(lambda: tags.finish_at(samples // HOP))
        if tags is not None and isinstance(result, dict):
            result["audio_tag"] = tags.clone()  # out of inference mode: an ordinary tensor
            result["at_time_res"] = state.at_time_res
        return result


def install(pipe):
    """Wrap ``pipe``'s methods (once)."""
    if isinstance(pipe.__dict__.get("_at_pipeline"), PipelineTagging):
        return
    tagging = PipelineTagging(pipe)
    pipe.__dict__["_at_pipeline"] = tagging
    pipe.preprocess = tagging.preprocess
    pipe._forward = tagging.forward
    pipe.postprocess = tagging.postprocess


def uninstall(pipe):
    tagging = pipe.__dict__.pop("_at_pipeline", None)
    if not isinstance(tagging, PipelineTagging):
        return
    for name in _METHODS:
        pipe.__dict__.pop(name, None)
        if tagging.own[name] is not None:
            setattr(pipe, name, tagging.own[name])
