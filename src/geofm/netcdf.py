"""Write an in-memory xarray Dataset as NetCDF-4 bytes with h5py directly, and read chip bands back fast.

Why: xarray's ``to_netcdf(engine="h5netcdf")`` spends most of a chip's write time in its encoding machinery
and h5netcdf's per-variable bookkeeping (repeated group look-ups, dimension scales detached and attached
again), not in HDF5. This writer lays out the same NetCDF-4 structure in one pass, as h5netcdf does, so
``xr.open_dataset(..., engine="h5netcdf")`` reads back the same variables, coordinates, attributes and
encodings (fill values, decoded times):

- every dimension is a 1-D coordinate variable made an HDF5 dimension scale (``CLASS``/``NAME``/
  ``REFERENCE_LIST``) with ``_Netcdf4Dimid`` = its index in ``ds.dims``; every other variable with
  dimensions gets ``DIMENSION_LIST`` (scales attached), ``_Netcdf4Coordinates`` and ``_Netcdf4Dimid``
  (netCDF-C and h5netcdf write both);
- float variables get ``_FillValue`` NaN (the HDF5 fill value too), unless their encoding names another
  ``_FillValue`` or ``None``; integers get none (as xarray does);
- datetime64 variables are stored as integers with CF ``units``/``calendar`` (xarray's own encoder, so they
  decode to the same datetime64);
- a variable's ``coordinates`` attribute comes from its encoding, else lists the non-dimension coordinates
  whose dimensions it has (xarray's rule); ``grid_mapping`` from the encoding when not an attribute;
- attributes: strings as NC_CHAR (fixed-length, as netCDF-C writes them; h5netcdf would write NC_STRING,
  which ``ncdump -t`` and CF checkers do not take for ``units``), lists of strings as variable-length string
  arrays (NC_STRING), numbers as one-element arrays (so, as with h5netcdf, a one-element list reads back as
  a scalar); every reader gets the same values as from h5netcdf's file;
- n-D variables (not the dimension coordinates) are stored as ONE chunk each, shuffled and deflated
  here (numpy byte shuffle + ISA-L's zlib-compatible deflate, several times faster than zlib at a
  similar ratio; optionally byte plane by byte plane, near-noise planes stored: :func:`deflated_chunk`)
  and written with ``write_direct_chunk``: the file declares the standard HDF5 shuffle +
  deflate filters, so every HDF5/netCDF reader (h5py, netCDF-C, GDAL) decodes it with plain zlib. One
  chunk per variable also compresses better than h5py's small chunk guess (what h5netcdf used) and
  reads whole arrays (what steps 2+ do) in one go. Scalars and dimension coordinates are contiguous,
  uncompressed.
- the file is written in memory (HDF5's core driver); attributes of the root group too stay in its object
  header (HDF5 then writes a version-2 superblock).

Stamping (``stamp=True``, the default): chips of one structure differ only in values of fixed size and in
their compressed chunks, so HDF5 writes each structure once per process as a template, and a chip is the
template's bytes with its values put in place and its chunks appended (see "stamping" below; ~7 ms of
h5py per chip saved). Reading (:func:`read_bands`): files of a layout already seen are read from their
chunk index entries without h5py (see "reading chips of a known layout").

Only what the pipeline's chips need is supported: numeric and datetime64 variables whose dimensions all
have a coordinate variable, in the root group. Anything else is a ``ValueError`` naming the variable.
"""

from __future__ import annotations

import io
import itertools
import struct
import sys
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import h5py
import numpy as np
import xarray as xr
from affine import Affine
from h5py import h5a, h5d, h5ds, h5f, h5i, h5o, h5p, h5s, h5t, h5z
from isal import igzip_lib, isal_zlib
from xarray.coding.times import encode_cf_datetime

from geofm import hdf5_layout

NC_PROPERTIES = f"version=2,geofm-h5py,hdf5={h5py.version.hdf5_version},h5py={h5py.__version__}"
_NC_PROPERTIES = np.array(NC_PROPERTIES, dtype=h5py.string_dtype("ascii", len(NC_PROPERTIES)))  # fixed length
_NUMERIC_KINDS = "fiu"  # bool would need xarray's int8 + dtype attribute encoding: refused
ISAL_MAX_LEVEL = 3  # ISA-L's deflate levels (its own scale, not zlib's): 1 fastest, 3 smallest


@dataclass(frozen=True)
class Variable:
    """One variable to write: its dimensions, values and attributes (written in this order, after
    ``_FillValue``). ``encoding`` may give ``_FillValue`` (``None``: none; default NaN for floats, none for
    integers) and, for datetime64 values, CF ``units``/``calendar`` (default: xarray's choice)."""

    dims: tuple[str, ...]
    values: np.ndarray
    attrs: Mapping[str, Any] = field(default_factory=dict)
    encoding: Mapping[str, Any] = field(default_factory=dict)


def dataset_bytes(ds: xr.Dataset, complevel: int = 2, shuffle: bool = True, min_saving: float = 0.0
                  ) -> bytes:
    """``ds`` as NetCDF-4 bytes readable by ``xr.open_dataset(..., engine="h5netcdf")`` (see module doc).

    ``complevel``: ISA-L deflate level 1-3, recorded as the deflate filter's level (readers ignore it);
    0 stores the variables uncompressed. ``min_saving``: see :func:`deflated_chunk`."""
    dims = {str(d) for d in ds.dims}
    variables = {}
    for name, var in ds.variables.items():
        attrs = dict(var.attrs)
        for key in ("grid_mapping", "coordinates"):
            if key in var.encoding and key not in attrs:
                attrs[key] = var.encoding[key]
        if str(name) not in dims and "coordinates" not in attrs:
            coords = _default_coordinates(ds, str(name), var)
            if coords:
                attrs["coordinates"] = coords
        encoding = {k: var.encoding[k] for k in ("_FillValue", "units", "calendar") if k in var.encoding}
        variables[str(name)] = Variable(tuple(str(d) for d in var.dims), var.values, attrs, encoding)
    return arrays_bytes(variables, ds.attrs, complevel, shuffle, min_saving=min_saving)


def arrays_bytes(variables: Mapping[str, Variable], attrs: Mapping[Hashable, Any], complevel: int = 2,
                 shuffle: bool = True, *, stamp: bool = True, min_saving: float = 0.0) -> bytes:
    """NetCDF-4 bytes of ``variables`` (in this order) and global ``attrs``, laid out as
    :func:`dataset_bytes` does (see module doc); dimension ids follow the dimensions' first appearance.
    Step 1 builds its chips this way, straight from arrays (no xarray Dataset in between)."""
    if not 0 <= complevel <= ISAL_MAX_LEVEL:
        raise ValueError(f"NetCDF complevel must be 0-{ISAL_MAX_LEVEL} (an ISA-L level), got {complevel}")
    dims = list(dict.fromkeys(d for var in variables.values() for d in var.dims))
    for d in dims:
        if d not in variables or variables[d].dims != (d,):
            raise ValueError(f"NetCDF writer: dimension {d!r} has no 1-D coordinate variable {d!r}")
    dimid = {d: i for i, d in enumerate(dims)}
    prepared = [_prepare(name, var, name in dimid, complevel, shuffle, min_saving)
                for name, var in variables.items()]
    global_attrs = {str(k): _attr_value(v, f"global attribute {k!r}") for k, v in attrs.items()}
    if stamp:
        return _stamped(prepared, global_attrs, dims, complevel, shuffle)
    return _h5py_bytes(prepared, global_attrs, dims, complevel, shuffle)


def _h5py_bytes(prepared: list[_Prepared], global_attrs: dict[str, Any], dims: list[str], complevel: int,
                shuffle: bool) -> bytes:
    """The file of the prepared variables and global attributes, written by HDF5 (through h5py's
    low-level API) in memory (HDF5's core driver)."""
    dimid = {d: i for i, d in enumerate(dims)}
    name = f"geofm-chip-{next(_FILE_NUMBERS)}.nc".encode()
    fid = h5f.create(name, h5f.ACC_TRUNC, fapl=_fapl(), fcpl=_fcpl())
    try:
        ids = {p.name: _create(fid, p, complevel, shuffle) for p in prepared}
        for d in dims:
            h5ds.set_scale(ids[d], d.encode())
            _set_attr(ids[d], "_Netcdf4Dimid", np.int32(dimid[d]))
            _set_attr(ids[d], "_Netcdf4Coordinates", np.array([dimid[d]], np.int32))
        for p in prepared:
            if p.name in dimid or not p.dims:
                continue
            for axis, d in enumerate(p.dims):
                h5ds.attach_scale(ids[p.name], ids[d], axis)
            dim_ids = np.array([dimid[d] for d in p.dims], np.int32)
            _set_attr(ids[p.name], "_Netcdf4Coordinates", dim_ids)
            _set_attr(ids[p.name], "_Netcdf4Dimid", dim_ids[0])
        for key, value in global_attrs.items():
            _set_attr(fid, key, value)
        _set_attr(fid, "_NCProperties", _NC_PROPERTIES)  # marks a netCDF-4 file for netCDF-C
        for did in ids.values():
            did.close()
        h5f.flush(fid)
        return fid.get_file_image()
    finally:
        fid.close()


_FILE_NUMBERS = itertools.count()  # in-memory files are named: HDF5 refuses two open files of one name


@lru_cache(maxsize=1)
def _fapl() -> h5py.h5p.PropFAID:
    """File access: in memory (core driver, no file on disk), the earliest file format (as h5py's default)."""
    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_fapl_core(1 << 21, False)
    fapl.set_fclose_degree(h5f.CLOSE_STRONG)
    return fapl


@lru_cache(maxsize=1)
def _fcpl() -> h5py.h5p.PropFCID:
    """File creation: links and attributes in creation order (h5py's ``track_order``), and the root
    group's attributes kept in its object header, as the variables' are (see MAX_COMPACT_ATTRIBUTES)."""
    fcpl = h5p.create(h5p.FILE_CREATE)
    fcpl.set_link_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED)
    fcpl.set_attr_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED)
    fcpl.set_attr_phase_change(MAX_COMPACT_ATTRIBUTES, MAX_COMPACT_ATTRIBUTES - 8)
    fcpl.set_obj_track_times(False)  # same inputs, same bytes
    return fcpl


# ---- stamping: every chip of a run has the same file structure --------------------------------------
# Chips differ in their compressed chunks and in values of fixed size (coordinates, numbers, strings of
# the same length), never in structure. So HDF5 writes the structure once (a template: the file with
# one-byte stand-in chunks), and each chip is the template's bytes with its values put in place, its
# chunks appended and the chunk index, end-of-file address and object header checksums updated: what
# HDF5 would write, less its per-object cost (~7 ms a chip through h5py). A template is checked once, by
# reading a stamped file back against HDF5's own file of the same chip; a structure that fails is written
# by HDF5 (``_h5py_bytes``) every time.


@dataclass(frozen=True)
class _Slot:
    """Where a variable's per-chip parts lie in a template."""

    chunk_record: int | None  # the chunk's entry in its B-tree node (size u32 here, address after the key)
    chunk_address_at: int | None
    data: int | None  # contiguous (uncompressed) data
    attrs: tuple[tuple[str, hdf5_layout.AttrValue], ...]


@dataclass(frozen=True)
class _Template:
    image: bytes
    superblock: hdf5_layout.Superblock
    slots: tuple[_Slot, ...]
    global_attrs: tuple[tuple[str, hdf5_layout.AttrValue], ...]


_TEMPLATES: dict[Hashable, _Template | None] = {}  # None: that structure is written by HDF5
_TEMPLATES_MAX = 64  # bounded (a template is the metadata of a file, ~20 KB): cleared when full
_TEMPLATES_LOCK = threading.Lock()


def _stamped(prepared: list[_Prepared], global_attrs: dict[str, Any], dims: list[str], complevel: int,
             shuffle: bool) -> bytes:
    """The file :func:`_h5py_bytes` writes for these arguments (the same structure and values), stamped
    from a template of its structure when there is one (made and checked on first use)."""
    key = (complevel, shuffle, tuple(dims), tuple(_variable_key(p) for p in prepared),
           _attrs_key(global_attrs))
    template = _TEMPLATES.get(key, False)
    if template is False:
        with _TEMPLATES_LOCK:
            template = _TEMPLATES.get(key, False)
            if template is False:
                template = _new_template(prepared, global_attrs, dims, complevel, shuffle)
                if len(_TEMPLATES) >= _TEMPLATES_MAX:
                    _TEMPLATES.clear()
                _TEMPLATES[key] = template
    if template is None:
        return _h5py_bytes(prepared, global_attrs, dims, complevel, shuffle)
    return _stamp(template, prepared, global_attrs)


def _variable_key(p: _Prepared) -> Hashable:
    return (p.name, p.dims, p.values.dtype.str, p.values.shape, None if p.fill is None else p.fill.tobytes(),
            p.chunk is not None, _attrs_key(p.attrs))


def _attrs_key(attrs: Mapping[str, Any]) -> Hashable:
    """Attribute names, types and sizes; the values themselves only where a value's size can vary
    (variable-length strings, stored outside the object header)."""
    return tuple((k, _size_key(v) if _patchable(v) else _frozen(v)) for k, v in attrs.items())


def _size_key(value: np.ndarray) -> Hashable:
    return value.dtype.str, value.shape, h5py.check_string_dtype(value.dtype)


def _patchable(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "fiuS"


def _new_template(prepared: list[_Prepared], global_attrs: dict[str, Any], dims: list[str], complevel: int,
                  shuffle: bool) -> _Template | None:
    """The template of this structure, checked against HDF5's file of these very values; None when the
    file is not laid out as expected or a stamped file does not read back the same."""
    stand_in = [p if p.chunk is None else _replace_chunk(p, b"\0") for p in prepared]
    image = _h5py_bytes(stand_in, global_attrs, dims, complevel, shuffle)
    try:
        template = _template(image, stand_in, global_attrs)
        ok = stored_content(_stamp(template, prepared, global_attrs)) == stored_content(
            _h5py_bytes(prepared, global_attrs, dims, complevel, shuffle))
    except Exception:  # a layout this code does not know, whatever the error: HDF5 writes such chips
        return None
    return template if ok else None


def _replace_chunk(p: _Prepared, chunk: bytes) -> _Prepared:
    return _Prepared(p.name, p.dims, p.values, p.fill, p.attrs, chunk)


def _chunk_entry(image: bytes, did: h5d.DatasetID) -> int:
    """Where the single chunk of ``did`` has its entry in its chunk B-tree node (version-1 record: size
    u32, filter mask u32, ndim + 1 offsets u64, then the chunk's address), found by its contents."""
    info = did.get_chunk_info(0)
    key = struct.pack("<II", info.size, 0) + bytes(8 * (len(did.shape) + 1))
    return _unique(image, key + struct.pack("<Q", info.byte_offset))


def _chunk_address_at(entry: int, ndim: int) -> int:
    """Where the chunk's address lies in the B-tree record at ``entry`` (see :func:`_chunk_entry`)."""
    return entry + 8 + 8 * (ndim + 1)


def _template(image: bytes, prepared: list[_Prepared], global_attrs: dict[str, Any]) -> _Template:
    """Where the per-chip parts of ``image`` (HDF5's file of ``prepared``) lie."""
    sb = hdf5_layout.superblock(image)
    if int.from_bytes(image[sb.eof_at:sb.eof_at + 8], "little") != len(image):
        raise ValueError("end-of-file address is not the image's size")
    slots = []
    with h5py.File(io.BytesIO(image), "r") as f:
        for p in prepared:
            did = h5d.open(f.id, p.name.encode())
            attrs = hdf5_layout.object_attributes(image, h5o.get_info(did).addr)
            record = address_at = data = None
            if p.chunk is not None:
                record = _chunk_entry(image, did)
                address_at = _chunk_address_at(record, p.values.ndim)
            elif p.values.nbytes:
                data = did.get_offset()
                if data is None or image[data:data + p.values.nbytes] != _stored(p.values):
                    raise ValueError(f"{p.name}: contiguous data not found")
            slots.append(_Slot(record, address_at, data, _attr_slots(attrs, p.attrs)))
        root = hdf5_layout.object_attributes(image, h5o.get_info(f.id).addr)
    return _Template(image, sb, tuple(slots), _attr_slots(root, global_attrs))


def _attr_slots(found: dict[str, hdf5_layout.AttrValue], attrs: Mapping[str, Any]
                ) -> tuple[tuple[str, hdf5_layout.AttrValue], ...]:
    out = []
    for name, value in attrs.items():
        if _patchable(value):
            slot = found[name]
            if slot.size != value.nbytes:
                raise ValueError(f"attribute {name!r}: {slot.size} bytes stored, {value.nbytes} expected")
            out.append((name, slot))
    return tuple(out)


def _unique(image: bytes, pattern: bytes) -> int:
    at = image.find(pattern)
    if at < 0 or image.find(pattern, at + 1) >= 0:
        raise ValueError("chunk index entry not found once")
    return at


def _stored(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values).tobytes()


def _stamp(template: _Template, prepared: list[_Prepared], global_attrs: dict[str, Any]) -> bytes:
    """The template's bytes with this chip's values, chunks, chunk index, end of file and checksums."""
    out = bytearray(template.image)
    dirty: set[hdf5_layout.Block] = set()
    address = len(out)
    chunks = []
    for slot, p in zip(template.slots, prepared, strict=True):
        if p.chunk is not None:
            struct.pack_into("<I", out, slot.chunk_record, len(p.chunk))
            struct.pack_into("<Q", out, slot.chunk_address_at, address)
            chunks.append(p.chunk)
            address += len(p.chunk)
        elif slot.data is not None:
            out[slot.data:slot.data + p.values.nbytes] = _stored(p.values)
        _put_attrs(out, slot.attrs, p.attrs, dirty)
    _put_attrs(out, template.global_attrs, global_attrs, dirty)
    struct.pack_into("<Q", out, template.superblock.eof_at, address)
    dirty.add(template.superblock.block)
    for block in dirty:
        sum_at = block.end - 4
        struct.pack_into("<I", out, sum_at, hdf5_layout.checksum(memoryview(out)[block.start:sum_at]))
    return b"".join([out, *chunks])


def _put_attrs(out: bytearray, slots: tuple[tuple[str, hdf5_layout.AttrValue], ...], attrs: Mapping[str, Any],
               dirty: set[hdf5_layout.Block]) -> None:
    for name, slot in slots:
        raw = attrs[name].tobytes()
        if out[slot.offset:slot.offset + slot.size] != raw:
            out[slot.offset:slot.offset + slot.size] = raw
            dirty.add(slot.block)


def stored_content(data: bytes, decoded: bool = False) -> list[Any]:
    """What a reader of the file gets, for comparing two files: every object's attributes (in order) and
    every dataset's type, shape, storage (chunks, filters, fill value) and stored bytes, or with
    ``decoded`` its values through the filters (ISA-L deflates equal values to bytes that can differ
    from run to run)."""
    out: list[Any] = []
    with h5py.File(io.BytesIO(data), "r") as f:
        out.append(("/", [(k, _attr_content(f, v)) for k, v in f.attrs.items()]))
        for name, ds in f.items():
            plist = ds.id.get_create_plist()
            filters = [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]
            stored = (np.asarray(ds[()]).tobytes() if decoded or not ds.chunks
                      else ds.id.read_direct_chunk((0,) * ds.ndim))
            out.append((name, ds.dtype.str, ds.shape, ds.chunks, filters, np.asarray(ds.fillvalue).tobytes(),
                        stored, [(k, _attr_content(f, v)) for k, v in ds.attrs.items()]))
    return out


def _attr_content(f: h5py.File, value: Any) -> Any:
    """An attribute value comparable across files: object references as the names they point to."""
    if isinstance(value, h5py.Reference):
        return ("ref", f[value].name)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OV":
            return (value.dtype.str, [_attr_content(f, v) for v in value.ravel().tolist()])
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, tuple | list):
        return [_attr_content(f, v) for v in value]
    return (type(value).__name__, value)


@dataclass(frozen=True)
class _Prepared:
    """A variable ready for HDF5: stored values, fill value, attributes and its deflated chunk if any."""

    name: str
    dims: tuple[str, ...]
    values: np.ndarray
    fill: np.ndarray | None
    attrs: dict[str, Any]
    chunk: bytes | None


def _prepare(name: str, var: Variable, is_dim: bool, complevel: int, shuffle: bool, min_saving: float
             ) -> _Prepared:
    """Encode (datetimes), check and compress one variable: the work done before (and without) HDF5."""
    values = np.asarray(var.values)
    attrs: dict[str, Any] = {}
    if values.dtype.kind == "M":
        units, calendar = var.encoding.get("units"), var.encoding.get("calendar")
        if values.ndim == 0:  # a chip's time: the same for every chip of a scene
            values, units, calendar = _encoded_time(values[()], units, calendar)
        else:
            values, units, calendar = encode_cf_datetime(values, units, calendar)
        values = np.asarray(values)
        attrs.update(units=units, calendar=calendar)
    if values.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"NetCDF writer: variable {name!r} has dtype {values.dtype}; only numbers and "
                         "datetime64 are supported")
    fill = var.encoding.get("_FillValue", np.nan if values.dtype.kind == "f" else None)
    attrs.update(var.attrs)
    attrs = {k: _attr_value(v, f"variable {name!r} attribute {k!r}") for k, v in attrs.items()}
    compress = bool(values.ndim and not is_dim and values.size and complevel)
    chunk = deflated_chunk(values, complevel, shuffle, min_saving) if compress else None
    fill_value = None if fill is None else np.array(fill, values.dtype)
    return _Prepared(name, var.dims, values, fill_value, attrs, chunk)


def _create(f: h5f.FileID, p: _Prepared, complevel: int, shuffle: bool) -> h5py.h5d.DatasetID:
    """The HDF5 dataset of ``p`` with its data and attributes, as h5py's ``create_dataset`` (track_order,
    no time stamps) would make it, through the low-level API (cheaper per call: step 1 makes 16 per chip)."""
    dtype = p.values.dtype
    dcpl = _dcpl(p.values.shape if p.chunk is not None else None, complevel, shuffle,
                 None if p.fill is None else (dtype.str, p.fill.tobytes()))
    space = h5s.create_simple(p.values.shape) if p.values.ndim else h5s.create(h5s.SCALAR)
    did = h5d.create(f, p.name.encode(), _htypes(dtype)[0], space, dcpl=dcpl)
    if p.chunk is not None:
        did.write_direct_chunk((0,) * p.values.ndim, p.chunk)
    else:
        did.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(p.values), mtype=_htypes(dtype)[1])
    if p.fill is not None:
        _set_attr(did, "_FillValue", p.fill.reshape(1))
    for key, value in p.attrs.items():
        _set_attr(did, key, value)
    return did


@lru_cache(maxsize=256)
def _encoded_time(value: np.datetime64, units: str | None, calendar: str | None
                  ) -> tuple[np.ndarray, str, str]:
    """xarray's CF encoding of one datetime64 (made once per value)."""
    values, units, calendar = encode_cf_datetime(np.asarray(value), units, calendar)
    return np.asarray(values), units, calendar


@lru_cache(maxsize=64)
def _dcpl(chunks: tuple[int, ...] | None, complevel: int, shuffle: bool, fill: tuple[str, bytes] | None
          ) -> h5py.h5p.PropDCID:
    """Dataset creation properties (one chunk through shuffle + deflate when ``chunks``), cached."""
    dcpl = h5p.create(h5p.DATASET_CREATE)
    if chunks is not None:
        dcpl.set_chunk(chunks)
        if shuffle:
            dcpl.set_shuffle()
        dcpl.set_deflate(complevel)
    if fill is not None:
        dcpl.set_fill_value(np.frombuffer(fill[1], np.dtype(fill[0])).reshape(()))
    dcpl.set_obj_track_times(False)
    dcpl.set_attr_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED)
    dcpl.set_attr_phase_change(MAX_COMPACT_ATTRIBUTES, MAX_COMPACT_ATTRIBUTES - 8)
    return dcpl


# Attributes per variable kept in its object header: HDF5's default (8) moves a CF variable's dozen
# attributes to "dense" storage, a fractal heap and B-tree of a few KB per variable.
MAX_COMPACT_ATTRIBUTES = 32


def deflated_chunk(values: np.ndarray, complevel: int, shuffle: bool, min_saving: float = 0.0) -> bytes:
    """``values`` as one HDF5 chunk through the shuffle (optional) and deflate filters, in that order:
    one zlib stream, decoded by any reader.

    ``min_saving`` 0: the (shuffled) values deflated in one go. With ``min_saving`` > 0 they are
    deflated a byte plane at a time (plane k: byte k of every value), each plane a segment of its own
    (history reset between them), and a plane that a probe of :data:`PROBE_BYTES` from its middle shows
    deflate would shrink by less than that share is stored as it is: the low mantissa bytes of float
    reflectance are close to noise, which costs deflate the most time (ISA-L ~0.35 GB/s there, ~2 GB/s
    on the other planes) for the least gain. Either way the compressed bytes can differ from run to run
    for the same values (ISA-L does not initialise its work buffers: intel/isa-l#140)."""
    size = values.dtype.itemsize
    shuffled = shuffle and size > 1
    if min_saving <= 0:
        return isal_zlib.compress(_shuffled(values) if shuffled else np.ascontiguousarray(values), complevel)
    if not shuffled:
        return _plane_stream([np.ascontiguousarray(values).reshape(-1).view(np.uint8)], complevel, min_saving)
    return _plane_stream(list(_shuffled(values)), complevel, min_saving)


PROBE_BYTES = 4096  # bytes of a plane deflated to judge it; planes under 4x this are always deflated
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KB window, no dictionary (the level bits are informational)
_LAST_BLOCK = b"\x01\x00\x00\xff\xff"  # an empty final stored block
_STORED_MAX = 65535  # bytes in one stored block


def _plane_stream(planes: list[np.ndarray], complevel: int, min_saving: float) -> bytes:
    """One zlib stream of ``planes`` (uint8, in order): each deflated and fully flushed (byte-aligned,
    history reset), or stored (see :func:`deflated_chunk`); the Adler-32 of all of them at the end."""
    parts = [_ZLIB_HEADER]
    deflate = isal_zlib.compressobj(complevel, isal_zlib.DEFLATED, -15)
    adler = 1
    for plane in planes:
        adler = isal_zlib.adler32(plane, adler)
        if complevel and not _store(plane, complevel, min_saving):
            parts += (deflate.compress(plane), deflate.flush(isal_zlib.Z_FULL_FLUSH))
            continue
        data = plane.tobytes()
        for i in range(0, max(len(data), 1), _STORED_MAX):
            block = data[i:i + _STORED_MAX]
            parts += (struct.pack("<BHH", 0, len(block), 0xFFFF ^ len(block)), block)
    parts += (_LAST_BLOCK, struct.pack(">I", adler))
    return b"".join(parts)


def _store(plane: np.ndarray, complevel: int, min_saving: float) -> bool:
    """Whether deflate would shrink ``plane`` by less than ``min_saving``, judged on a probe."""
    if plane.size < 4 * PROBE_BYTES:
        return False
    mid = (plane.size - PROBE_BYTES) // 2
    probe = igzip_lib.compress(plane[mid:mid + PROBE_BYTES], complevel, igzip_lib.COMP_DEFLATE)
    return len(probe) > (1.0 - min_saving) * PROBE_BYTES


_BYTES_IN_INTS = sys.byteorder == "little"  # byte k of a value in memory is bits 8k.. of its unsigned int


def _shuffled(values: np.ndarray) -> np.ndarray:
    """HDF5's shuffle: byte k of every value, for k = 0, 1, ... (the values' bytes as stored).
    Shifts of the values seen as unsigned integers, cast to bytes as they are written: ~1.7x a byte
    transpose's speed, and no contiguous copy of a strided array first."""
    size = values.dtype.itemsize
    out = np.empty((size, values.size), np.uint8)
    if not (_BYTES_IN_INTS and size in (2, 4, 8)):
        out[...] = np.ascontiguousarray(values).view(np.uint8).reshape(-1, size).T
        return out
    ints = values.view(f"u{size}")
    for k in range(size):
        np.right_shift(ints, 8 * k, out=out[k].reshape(values.shape), casting="unsafe")
    return out


def _unshuffle_into(planes: np.ndarray, out: np.ndarray) -> None:
    """The inverse of :func:`_shuffled`: ``planes`` [itemsize, n] (uint8) into ``out`` (C-contiguous, n
    values of that itemsize)."""
    size = out.dtype.itemsize
    if not (_BYTES_IN_INTS and size in (2, 4, 8)):
        values = out.reshape(-1).view(np.uint8).reshape(-1, size)
        for k in range(size):  # byte k of every value (one long strided copy each)
            values[:, k] = planes[k]
        return
    ints = out.reshape(-1).view(f"u{size}")
    byte = np.empty(ints.shape, ints.dtype)
    np.copyto(ints, planes[size - 1])
    for k in range(size - 2, -1, -1):
        np.left_shift(ints, 8, out=ints)
        np.copyto(byte, planes[k])
        np.bitwise_or(ints, byte, out=ints)


def _default_coordinates(ds: xr.Dataset, name: str, var: xr.Variable) -> str:
    """xarray's rule: a data variable lists the non-dimension coordinates whose dimensions it has."""
    if name in ds.coords:
        return ""
    return " ".join(str(c) for c in ds.coords if c not in ds.dims and set(ds[c].dims) <= set(var.dims))


def _set_attr(target: h5py.h5o.ObjectID, name: str, value: Any) -> None:
    """Create attribute ``name`` as ``target.attrs[name] = value`` would, through the low-level API
    (several times faster than the attribute manager, which checks for and replaces an existing one),
    with the value's HDF5 types and dataspace made once (a chip repeats most of its attributes)."""
    bname, data, htype, mtype = _attr_parts(name, value)
    attr = h5a.create(target, bname, htype, h5s.create_simple(data.shape))
    try:
        attr.write(data, mtype=mtype)
    finally:
        attr.close()


# values and types of attributes, made once; HDF5 objects kept here are few (h5py visits every live one
# when a file closes), so dataspaces are made per attribute
_ATTR_PARTS: dict[tuple[str, Hashable], tuple[bytes, np.ndarray, h5t.TypeID, h5t.TypeID]] = {}
_ATTR_PARTS_MAX = 4096  # bounded: cleared when full


def _attr_parts(name: str, value: Any) -> tuple[bytes, np.ndarray, h5t.TypeID, h5t.TypeID]:
    key = (name, _frozen(value))
    parts = _ATTR_PARTS.get(key)
    if parts is None:
        data = np.asarray(value, dtype=h5py.string_dtype()) if isinstance(value, str) else np.asarray(value)
        data = np.array(data, order="C")  # a copy of its own (ascontiguousarray would make 0-d into 1-d)
        data.flags.writeable = False
        htype, mtype = _htypes(data.dtype)
        parts = (name.encode(), data, htype, mtype)
        if len(_ATTR_PARTS) >= _ATTR_PARTS_MAX:
            _ATTR_PARTS.clear()
        _ATTR_PARTS[key] = parts
    return parts


def _frozen(value: Any) -> Hashable:
    """A hashable key telling attribute values apart by type, shape and content."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, tuple(value.ravel().tolist()))
    if isinstance(value, np.generic):
        return ("scalar", value.dtype.str, value.item())
    return (type(value).__name__, value)


@lru_cache(maxsize=64)
def _htypes(dtype: np.dtype) -> tuple[h5t.TypeID, h5t.TypeID]:
    """HDF5 file and memory types of a NumPy dtype, as h5py's attribute manager picks them."""
    return h5t.py_create(dtype, logical=True), h5t.py_create(dtype)


@lru_cache(maxsize=4096)
def char_attr(text: str) -> Any:
    """A string attribute as netCDF-C writes it (NC_CHAR: a fixed-length HDF5 string), which ``ncdump -t``
    and CF tools expect (``units`` of time, say); empty strings stay variable-length (HDF5 has no
    zero-length fixed string). h5netcdf and netCDF-C read both back as the same text. Made once per text
    (read-only: a chip repeats most of its attributes)."""
    raw = text.encode("utf-8")
    if not raw:
        return text
    value = np.array(raw, dtype=h5py.string_dtype("ascii" if raw.isascii() else "utf-8", len(raw)))
    value.flags.writeable = False
    return value


def _attr_value(value: Any, what: str) -> Any:
    """The value to store: str as NC_CHAR (:func:`char_attr`), numbers as one-element arrays, lists as
    arrays (lists of strings as NC_STRING arrays: netCDF has no char array of strings)."""
    if isinstance(value, str):
        return char_attr(value)
    if isinstance(value, bool | np.bool_) or value is None or isinstance(value, Mapping):
        raise ValueError(f"NetCDF writer: {what} has unsupported type {type(value).__name__}")
    if isinstance(value, list | tuple | np.ndarray):
        arr = np.asarray(value)
        if arr.ndim != 1:
            raise ValueError(f"NetCDF writer: {what} must be a flat list, got shape {arr.shape}")
        if arr.dtype.kind == "U":
            return arr.astype(h5py.string_dtype())
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"NetCDF writer: {what} holds unsupported values ({arr.dtype})")
        return arr
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "fiu":
        raise ValueError(f"NetCDF writer: {what} has unsupported type {type(value).__name__}")
    return arr.reshape(1)


_PACKING = ("scale_factor", "add_offset")


def read_bands(data: bytes, names: list[str], source: str, out: np.ndarray | None = None) -> np.ndarray:
    """Variables ``names`` of a NetCDF-4 file (its bytes) as float32 [C, H, W], NaN where nodata; into
    ``out`` (float32, C-contiguous, of that shape) when given.

    Reads the HDF5 datasets with h5py, several times faster than ``xr.open_dataset`` per chip; a variable
    stored as one chunk through shuffle + deflate (as step 1 writes them) is taken as its raw chunk and
    decoded here, with ISA-L and numpy, which release the GIL (h5py's own decoding holds it), so several
    threads read chips in parallel. A file whose variables are packed (scale/offset) or use a non-NaN
    ``_FillValue`` is decoded by xarray instead, so any CF-conformant chip reads the same. A missing
    variable raises naming ``source``.
    """
    chunks = _known_layout_chunks(data, names)
    if chunks is not None:
        return _decoded(chunks, {}, {chunks[0].shape}, names, source, out)
    with h5py.File(io.BytesIO(data), "r") as f:
        dsets = {n: _dataset(f, n) for n in names}  # low-level ids: half the cost of f[name] here
        missing = [n for n, d in dsets.items() if d is None]
        if missing:
            have = sorted(k for k in f if isinstance(f[k], h5py.Dataset) and f[k].ndim == 2)
            raise ValueError(f"{source}: chip lacks bands {missing} (has {have})")
        ids = [d for d in dsets.values() if d is not None]
        plain = all(_plain(d) for d in ids)
        if plain:
            chunks = [_raw_chunk(d) for d in ids]
            shapes = {d.shape for d in ids}
            plain_arrays = {k: f[n][()] for k, n in enumerate(names) if chunks[k] is None}
    if plain:
        out = _decoded(chunks, plain_arrays, shapes, names, source, out)
        if all(c is not None for c in chunks):
            _learn_layout(data)
        return out
    with xr.open_dataset(io.BytesIO(data), engine="h5netcdf") as ds:
        values = np.stack([ds[n].values.astype(np.float32) for n in names])
    if out is None:
        return values
    if out.shape != values.shape:
        raise ValueError(f"{source}: chip shape {values.shape}, expected {out.shape}")
    out[...] = values
    return out


def _decoded(chunks: list[_Chunk | None], plain_arrays: dict[int, np.ndarray], shapes: set[tuple[int, ...]],
             names: list[str], source: str, out: np.ndarray | None) -> np.ndarray:
    """The bands (chunks decoded here, other arrays as h5py read them) as float32 [C, H, W] in ``out``."""
    if len(shapes) != 1:
        raise ValueError(f"{source}: bands {names} differ in shape ({sorted(shapes)})")
    shape = (len(names), *shapes.pop())
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape:
        raise ValueError(f"{source}: chip shape {shape}, expected {out.shape}")
    for k, chunk in enumerate(chunks):
        if chunk is None:
            out[k] = plain_arrays[k]
        else:
            chunk.decode_into(out[k])
    return out


# ---- reading chips of a known layout without HDF5 -------------------------------------------------------
# Stamped chips of one structure are the same bytes up to their first chunk, but for values (attribute
# values, contiguous data, the chunk index entries, checksums and the end-of-file address). The first such
# file read through h5py teaches its layout: those bytes, which of them may vary, and where each plain
# single-chunk variable's index entry lies. A later file whose bytes up to its chunks are the same outside
# the varying ones has the very same structure (names, types, filters, fill values), so its chunks are
# taken from their index entries directly (~2 ms of h5py a chip saved).


@dataclass(frozen=True)
class _KnownLayout:
    prefix: np.ndarray  # uint8: the file's bytes before its first chunk
    fixed: np.ndarray  # uint8: 0xFF where a file of this layout must have the same byte, else 0
    eof_at: int  # where the superblock holds the end-of-file address (a cut-off file is not read)
    bands: dict[str, tuple[int, np.dtype, tuple[int, ...], bool]]  # name: index entry, dtype, shape, shuffled

    def chunks(self, data: bytes, names: list[str]) -> list[_Chunk] | None:
        n = len(self.prefix)
        if len(data) < n or any(name not in self.bands for name in names):
            return None
        if int.from_bytes(data[self.eof_at:self.eof_at + 8], "little") != len(data):
            return None
        diff = np.bitwise_xor(np.frombuffer(data, np.uint8, n), self.prefix)
        if np.bitwise_and(diff, self.fixed, out=diff).any():
            return None
        out = []
        for name in names:
            entry, dtype, shape, shuffled = self.bands[name]
            size = struct.unpack_from("<I", data, entry)[0]
            address = struct.unpack_from("<Q", data, _chunk_address_at(entry, len(shape)))[0]
            if address < n or address + size > len(data):
                return None
            out.append(_Chunk(data[address:address + size], dtype, shape, shuffled))
        return out


_KNOWN_LAYOUTS: list[_KnownLayout] = []
_KNOWN_LAYOUTS_MAX = 32
_LEARN_TRIES = [64]  # files that could not be learnt before giving up (a bound on wasted work)
_KNOWN_LAYOUTS_LOCK = threading.Lock()


def _known_layout_chunks(data: bytes, names: list[str]) -> list[_Chunk] | None:
    for layout in tuple(_KNOWN_LAYOUTS):
        chunks = layout.chunks(data, names)
        if chunks is not None:
            return chunks
    return None


def _learn_layout(data: bytes) -> None:
    """Learn the layout of ``data`` (see above) when it is a stamped chip's: metadata first (superblock
    version 2, as the chip writer's), every chunk after it, back to back to the end of the file."""
    if data[8:9] != b"\x02" or len(_KNOWN_LAYOUTS) >= _KNOWN_LAYOUTS_MAX or _LEARN_TRIES[0] <= 0:
        return
    try:
        layout = _layout_of(data)
    except Exception:  # a layout this code does not know, whatever the error: h5py reads such files
        layout = None
    with _KNOWN_LAYOUTS_LOCK:
        if layout is None:
            _LEARN_TRIES[0] -= 1
        elif len(_KNOWN_LAYOUTS) < _KNOWN_LAYOUTS_MAX:
            _KNOWN_LAYOUTS.insert(0, layout)


def _layout_of(data: bytes) -> _KnownLayout | None:
    sb = hdf5_layout.superblock(data)
    varying = [(sb.eof_at, 8), (sb.block.end - 4, 4)]
    chunks, bands = [], {}
    with h5py.File(io.BytesIO(data), "r") as f:
        objects = [f.id] + [h5o.open(f.id, name.encode()) for name in f]
        for obj in objects:
            for name, value in hdf5_layout.object_attributes(data, h5o.get_info(obj).addr).items():
                varying.append((value.block.end - 4, 4))
                if name not in ("_FillValue", *_PACKING):
                    varying.append((value.offset, value.size))
        for did in objects[1:]:
            if not isinstance(did, h5d.DatasetID):
                return None
            layout = did.get_create_plist().get_layout()
            if layout == h5d.CONTIGUOUS:
                offset = did.get_offset()
                if offset is not None:
                    varying.append((offset, did.get_storage_size()))
                continue
            chunk = _raw_chunk(did) if layout == h5d.CHUNKED else None
            if chunk is None:
                return None
            info = did.get_chunk_info(0)
            entry = _chunk_entry(data, did)
            varying += [(entry, 4), (_chunk_address_at(entry, len(did.shape)), 8)]
            chunks.append((info.byte_offset, info.size))
            if _plain(did):
                name = h5i.get_name(did).decode().lstrip("/")
                bands[name] = (entry, chunk.dtype, chunk.shape, chunk.shuffled)
    chunks.sort()
    start = chunks[0][0] if chunks else len(data)
    if [a for a, _ in chunks] != list(itertools.accumulate([start] + [s for _, s in chunks[:-1]])) \
            or start + sum(s for _, s in chunks) != len(data):
        return None
    fixed = np.full(start, 0xFF, np.uint8)
    for offset, size in varying:
        if offset + size > start:
            return None
        fixed[offset:offset + size] = 0
    return _KnownLayout(np.frombuffer(data, np.uint8, start).copy(), fixed, sb.eof_at, bands)


def _dataset(f: h5py.File, name: str) -> h5d.DatasetID | None:
    """The low-level id of dataset ``name`` in ``f``; None when there is none (or not a dataset)."""
    try:
        return h5d.open(f.id, name.encode())
    except (KeyError, ValueError):
        return None


def _plain(did: h5d.DatasetID) -> bool:
    """Neither packed (scale/offset) nor filled with anything but NaN: the stored values are the values.
    (Low-level attribute calls: a fraction of the attribute manager's cost, and step 2 asks per band.)"""
    if any(h5a.exists(did, name.encode()) for name in _PACKING):
        return False
    if not h5a.exists(did, b"_FillValue"):
        return True
    attr = h5a.open(did, b"_FillValue")
    try:
        value = np.empty(attr.shape, attr.dtype)
        attr.read(value)
        return bool(np.isnan(value.astype(np.float64)).all())
    except (TypeError, ValueError):  # not a number: not plain
        return False
    finally:
        attr.close()


@dataclass(frozen=True)
class _Chunk:
    """A variable's one chunk as stored: deflated bytes, shuffled or not."""

    data: bytes
    dtype: np.dtype
    shape: tuple[int, ...]
    shuffled: bool

    def decode_into(self, out: np.ndarray) -> None:
        """Inflate (and unshuffle) the chunk into ``out`` (C-contiguous, of the chunk's shape)."""
        raw = np.frombuffer(isal_zlib.decompress(self.data), np.uint8)
        size = self.dtype.itemsize
        if not (self.shuffled and size > 1):
            out[...] = raw.view(self.dtype).reshape(self.shape)
            return
        planes = raw.reshape(size, -1)
        if out.dtype != self.dtype:
            values = np.empty(self.shape, self.dtype)
            _unshuffle_into(planes, values)
            out[...] = values
            return
        _unshuffle_into(planes, out)


def _raw_chunk(did: h5d.DatasetID) -> _Chunk | None:
    """The dataset's stored chunk when it is one chunk through (shuffle +) deflate only, else None."""
    plist = did.get_create_plist()
    shape = did.shape
    if not shape or plist.get_layout() != h5d.CHUNKED or plist.get_chunk() != shape:
        return None
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if filters not in ([h5z.FILTER_DEFLATE], [h5z.FILTER_SHUFFLE, h5z.FILTER_DEFLATE]):
        return None
    dtype = did.dtype
    if dtype.kind not in _NUMERIC_KINDS:
        return None
    if did.get_num_chunks() != 1:  # never written: the fill value, which h5py reads
        return None
    mask, data = did.read_direct_chunk((0,) * len(shape))
    if mask:  # a filter was skipped for this chunk
        return None
    return _Chunk(data, dtype, shape, filters[0] == h5z.FILTER_SHUFFLE)


def read_grid(data: bytes, source: str) -> tuple[Affine, str | None]:
    """The pixel grid of a chip NetCDF (its bytes): the affine transform from its ``x``/``y`` pixel-centre
    coordinates (``y`` descending) and its ``crs`` global attribute (None when absent). A file without
    such coordinates raises ``ValueError`` naming ``source``."""
    with h5py.File(io.BytesIO(data), "r") as f:
        if "x" not in f or "y" not in f or f["x"].ndim != 1 or f["y"].ndim != 1:
            raise ValueError(f"{source}: no 1-D x/y coordinates")
        x, y = f["x"][()].astype(np.float64), f["y"][()].astype(np.float64)
        crs = f.attrs.get("crs")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"{source}: fewer than 2 pixels along x or y")
    dx, dy = x[1] - x[0], y[1] - y[0]
    if isinstance(crs, bytes | np.bytes_):
        crs = crs.decode("utf-8", "replace")
    elif isinstance(crs, np.ndarray):
        crs = str(crs.reshape(-1)[0]) if crs.size else None
    return Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2), (str(crs) if crs else None)
