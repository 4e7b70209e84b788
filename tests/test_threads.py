"""Threads sharing one model: concurrent calls give the results of sequential ones.

openai-whisper's decoder installs its kv-cache hooks on the model for each decode, so two
threads decoding with one model at once corrupt each other (a RuntimeError in attention);
``whisper_at.transcribe`` holds the model's lock (``WhisperAT.at_lock``) while it runs.
"""

import copy
import pickle
import threading

import torch

import whisper_at


def _concurrently(*calls):
    """Run the calls in threads released together; their results (exceptions re-raised)."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_two_threads_transcribing_with_one_model_match_sequential_runs(
    tiny_at, speech_wav, long_speech_wav
):
    jobs = [
        lambda: whisper_at.transcribe(tiny_at, str(speech_wav), fp16=False, temperature=0.0),
        lambda: whisper_at.transcribe(tiny_at, str(speech_wav), fp16=False, temperature=0.0,
                                      word_timestamps=True),
        lambda: tiny_at.tag(str(long_speech_wav), window_seconds=10),
    ]
    sequential = [job() for job in jobs]
    concurrent = _concurrently(*jobs)
    for expected, actual in zip(sequential, concurrent):
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(actual[key], value, rtol=0, atol=0)
            else:
                assert actual[key] == value, key
    assert "garden" in concurrent[1]["text"] and concurrent[1]["segments"][0]["words"]


def test_models_still_copy_and_pickle_with_their_own_lock(tiny_at):
    twin = copy.deepcopy(tiny_at)
    assert twin.at_lock is not tiny_at.at_lock and twin.at_lock is twin.at_lock
    again = pickle.loads(pickle.dumps(twin))
    assert again.has_at_head and again.at_lock is not twin.at_lock
