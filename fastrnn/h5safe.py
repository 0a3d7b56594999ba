"""Reading HDF5 files that may be damaged: checks for damage the HDF5 library itself does not survive.

HDF5 (2.0) reads a global heap collection (where h5py keeps variable-length strings, such as the JSON attributes of
checkpoints and corpora) with a loop that advances by each object's recorded size; an object of index 0 (the free
space) whose size reads as 0 makes it loop forever. `check_global_heaps` walks every collection of a file the way
the library does, first, and reports such a collection as damage instead.
"""

import os
import struct

SIGNATURE = b"GCOL"
HEADER = 16  # signature, version, 3 reserved bytes, collection size (8-byte lengths)
OBJECT_HEADER = 16  # index (2), references (2), reserved (4), size (8)
_SCAN = 1 << 20


def check_global_heaps(path, skip=()):
    """Raise ValueError naming the byte offset of a global heap collection in HDF5 file `path` that HDF5 would
    never finish reading. skip: (offset, nbytes) ranges of raw data (datasets' contents), not scanned."""
    size = os.path.getsize(path)
    ranges = sorted((int(a), int(a) + int(n)) for a, n in skip if n)
    gaps, pos = [], 0
    for a, b in ranges:
        if a > pos:
            gaps.append((pos, min(a, size)))
        pos = max(pos, b)
    if pos < size:
        gaps.append((pos, size))
    with open(path, "rb") as fh:
        for a, b in gaps:
            for at in _find(fh, SIGNATURE, a, b):
                _check_collection(fh, at, size)


def _find(fh, needle, a, b):
    """Offsets of `needle` in the file's bytes [a, b), read in bounded pieces."""
    pos = a
    while pos < b:
        fh.seek(pos)
        piece = fh.read(min(_SCAN, b - pos) + len(needle) - 1)
        i = piece.find(needle)
        while i >= 0:
            if i < _SCAN and pos + i + len(needle) <= b:
                yield pos + i
            i = piece.find(needle, i + 1)
        pos += _SCAN


def _check_collection(fh, at, file_size):
    fh.seek(at)
    header = fh.read(HEADER)
    if len(header) < HEADER or header[4] != 1 or header[5:8] != b"\0\0\0":
        return  # not a collection header (HDF5 checks these itself and fails cleanly)
    (collection_size,) = struct.unpack_from("<Q", header, 8)
    end = at + min(collection_size, file_size - at)
    p = at + HEADER
    while p < end:
        if p + OBJECT_HEADER > end:
            return
        fh.seek(p)
        index, _, _, obj_size = struct.unpack("<HHIQ", fh.read(OBJECT_HEADER))
        need = OBJECT_HEADER + (obj_size + 7) // 8 * 8 if index > 0 else obj_size
        if need == 0:
            raise ValueError(f"the global heap at byte offset {at} is damaged (an object of size 0 at byte "
                             f"offset {p})")
        p += need


# Reading an attribute or dataset whose datatype message is damaged can crash the HDF5 library (a segfault in the
# type conversion): these check the datatype before anything is read. They raise ValueError (KeyError if missing).

def str_attr(obj, name):
    """The string attribute `name` of an h5py object, read only if it is a scalar HDF5 string."""
    from h5py import h5t

    attr = obj.attrs.get_id(name)
    tid = attr.get_type()
    if attr.shape != () or tid.get_class() != h5t.STRING or tid.get_cset() not in (h5t.CSET_ASCII, h5t.CSET_UTF8):
        raise ValueError(f"attribute {name} is not a string")
    value = obj.attrs[name]
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def int_attr(obj, name):
    """The integer attribute `name` of an h5py object, read only if it is a scalar HDF5 integer of at most 8 bytes."""
    from h5py import h5t

    attr = obj.attrs.get_id(name)
    tid = attr.get_type()
    if attr.shape != () or tid.get_class() != h5t.INTEGER or tid.get_size() > 8:
        raise ValueError(f"attribute {name} is not an integer")
    return int(obj.attrs[name])


def dataset_extent(d, file_size):
    """(byte offset or None, bytes) of the raw data of h5py dataset d, checked before it is read: a plain numeric
    type (the standard type of its numpy dtype), contiguous storage of exactly its shape, inside the file."""
    from h5py import h5t

    dtype = d.dtype
    if dtype.kind not in "fiu" or not d.id.get_type().equal(h5t.py_create(dtype)):
        raise ValueError(f"dataset {d.name} has a damaged datatype")
    offset, nbytes = d.id.get_offset(), d.id.get_storage_size()
    if nbytes != d.size * dtype.itemsize or (nbytes and offset is None):
        raise ValueError(f"dataset {d.name} does not hold its shape {d.shape}")
    if offset is not None and offset + nbytes > file_size:
        raise ValueError(f"dataset {d.name} runs past the end of the file")
    return offset, nbytes
