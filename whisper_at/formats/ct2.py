"""Reading CTranslate2 model files (``model.bin``, or split ``model.bin.partN``)."""

import json
import os
import re
import struct
from typing import BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]
CT2Source = Union[PathLike, Sequence[PathLike]]

# order of the DataType enum in CTranslate2's include/ctranslate2/types.h
_CT2_DTYPES = {
    0: np.dtype("<f4"),  # FLOAT32
    1: np.dtype("i1"),  # INT8
    2: np.dtype("<i2"),  # INT16
    3: np.dtype("<i4"),  # INT32
    4: np.dtype("<f2"),  # FLOAT16
    5: np.dtype("<u2"),  # BFLOAT16 (raw bits, widened to float32 on read)
}
_BFLOAT16 = 5
_PART_RE = re.compile(r"^model\.bin\.part(\d+)$")


class _ChainReader:
    """Sequential reader over several files, as if they were concatenated."""

    def __init__(self, paths: List[str]):
        self.paths = list(paths)
        self.index = 0
        self.file: Optional[BinaryIO] = open(self.paths[0], "rb")

    def readinto(self, buffer: memoryview) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self.file is not None:
            n = self.file.readinto(view[filled:])
            if n:
                filled += n
                continue
            self._next_file()
        return filled

    def _next_file(self) -> None:
        self.file.close()
        self.index += 1
        self.file = open(self.paths[self.index], "rb") if self.index < len(self.paths) else None

    def skip(self, size: int) -> int:
        """Move ``size`` bytes forward without reading them; returns the bytes skipped."""
        skipped = 0
        while skipped < size and self.file is not None:
            here = self.file.tell()
            step = min(size - skipped, os.fstat(self.file.fileno()).st_size - here)
            if step > 0:
                self.file.seek(step, os.SEEK_CUR)
                skipped += step
                continue
            self._next_file()
        return skipped

    def read_exact(self, size: int) -> bytes:
        data = bytearray(size)
        if self.readinto(memoryview(data)) != size:
            raise ValueError(f"Truncated CTranslate2 model: {self.paths}")
        return bytes(data)

    def at_eof(self) -> bool:
        return self.readinto(memoryview(bytearray(1))) == 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _part_number(path: str) -> int:
    match = _PART_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else -1


def _ct2_files(src: CT2Source) -> Tuple[List[str], Optional[str]]:
    """Return the model.bin file(s) to read, in order, and the model directory."""
    if not isinstance(src, (str, os.PathLike)):
        paths = [os.fspath(p) for p in src]
        if not paths:
            raise ValueError("Empty list of CTranslate2 model parts")
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CTranslate2 model part not found: {path}")
        if all(_part_number(p) >= 0 for p in paths):
            paths.sort(key=_part_number)
        return paths, os.path.dirname(os.path.abspath(paths[0]))

    path = os.fspath(src)
    if os.path.isfile(path):
        directory = os.path.dirname(os.path.abspath(path))
        if _part_number(path) < 0:
            return [path], directory
        path = directory
    if not os.path.isdir(path):
        raise FileNotFoundError(f"CTranslate2 model not found: {path}")
    if os.path.isfile(os.path.join(path, "model.bin")):
        return [os.path.join(path, "model.bin")], path
    parts = sorted((p for p in os.listdir(path) if _part_number(p) >= 0), key=_part_number)
    if not parts:
        raise ValueError(f"No model.bin or model.bin.part* in CTranslate2 directory: {path}")
    numbers = [_part_number(p) for p in parts]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ValueError(f"Missing CTranslate2 model parts in {path}: found {parts}")
    return [os.path.join(path, p) for p in parts], path


def read_ct2_model(
    path: CT2Source, keep: Optional[Callable[[str], bool]] = None
) -> Tuple[Dict[str, np.ndarray], dict]:
    """Parse a CTranslate2 model.bin (possibly split in parts) and its config.json.

    Returns the variables by name (aliases resolved; bfloat16 widened to float32) and the
    parsed config.json of the model directory, or an empty dict when there is none.
    ``keep(name)``: read only the variables it accepts (the others are skipped, not loaded).
    """
    files, directory = _ct2_files(path)
    reader = _ChainReader(files)
    try:

        def unpack(fmt: str):
            return struct.unpack("<" + fmt, reader.read_exact(struct.calcsize("<" + fmt)))

        def read_string() -> str:
            (length,) = unpack("H")
            return reader.read_exact(length).rstrip(b"\0").decode("utf-8")

        (version,) = unpack("I")
        if not 1 <= version <= 6:
            raise ValueError(f"Unsupported CTranslate2 binary version {version} in {files[0]}")
        if version >= 2:
            spec = read_string()
            unpack("I")  # spec revision
            if spec != "WhisperSpec":
                raise ValueError(f"Not a CTranslate2 Whisper model ({spec}): {files[0]}")
        (count,) = unpack("I")
        variables: Dict[str, np.ndarray] = {}
        for _ in range(count):
            name = read_string()
            (rank,) = unpack("B")
            shape = unpack(f"{rank}I") if rank else ()
            if version >= 4:
                type_id, num_bytes = unpack("BI")
            else:  # older binaries store the item size (float32 or int8/int16 only)
                item_size, num_items = unpack("BI")
                type_id, num_bytes = {4: 0, 1: 1, 2: 2}.get(item_size, -1), item_size * num_items
            if type_id not in _CT2_DTYPES:
                raise ValueError(f"Unsupported CTranslate2 dtype id {type_id} for {name}")
            if keep is not None and not keep(name):
                if reader.skip(num_bytes) != num_bytes:
                    raise ValueError(f"Truncated CTranslate2 model while reading {name}: {files}")
                continue
            array = np.empty(num_bytes // _CT2_DTYPES[type_id].itemsize, _CT2_DTYPES[type_id])
            if reader.readinto(memoryview(array)) != num_bytes:
                raise ValueError(f"Truncated CTranslate2 model while reading {name}: {files}")
            if type_id == _BFLOAT16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array.reshape(shape)
        if version >= 3:
            (num_aliases,) = unpack("I")
            for _ in range(num_aliases):
                alias, target = read_string(), read_string()
                if keep is None or target in variables:  # aliases of skipped ones: dropped
                    variables[alias] = variables[target]
        if not reader.at_eof():
            raise ValueError(f"Trailing data after CTranslate2 model: {files}")
    finally:
        reader.close()

    config = {}
    config_path = os.path.join(directory, "config.json") if directory else None
    if config_path and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    return variables, config



def _is_ct2_file(path: str) -> bool:
    """A model.bin.partN file, or a model.bin starting with a CT2 binary version."""
    if _part_number(path) >= 0:
        return True
    if os.path.basename(path) != "model.bin":
        return False
    with open(path, "rb") as f:
        header = f.read(4)
    return len(header) == 4 and 1 <= struct.unpack("<I", header)[0] <= 6

