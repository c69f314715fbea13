"""Time-sliced interaction and co-interaction sets (SCoRe Section 2, Eq. 2-5), resampled to S.

Every random choice is a hash of ids and ``index.seed`` (Spark's xxhash64, numpy splitmix64),
so the output is a function of (data, seed, S, cap) only: the same on any number of
partitions. Spark hashes and shuffles; the sets themselves are built in numpy per partition
(``side_sets``: two passes and one shuffle per side, no join).

Sampling, and how it relates to "uniform over the set"
-------------------------------------------------------
*Interaction sets* G_t(u), G_t(v) (Eq. 2-3, per slice): members are ordered by
``xxhash64(order_salt, entity, member, slice)``, an independent random order per set; the
first S are kept. That is a uniform sample without replacement (random-hash model).

*Co-interaction sets* G_t(v|u), G_t(u|v) (Eq. 4-5, per slice) are the 2-hop neighbours
minus the entity itself. Materialising the unions explodes on hubs (an item seen by 10^5
users in a day puts each of them in 10^5 unions). We never build them. Order every 1-hop
list by ``h(member, slice) = xxhash64(sketch_salt, member, slice)`` (a hash of the member
alone, the same in every list of that slice); for a triple (entity e, neighbour m) the
*sketch* is the S smallest-h members of m's list other than e. The S smallest-h members of
the union minus e are always inside the union of e's neighbours' sketches (such a member x
lies in some neighbour's list, and every member ahead of x there, e excluded, is in the
union minus e and smaller than x: at most S-1 of them), so

    co-set = S smallest-h of (union of the sketches e's neighbours carry for e)

is *exactly* the S smallest-h members of the true Eq. 4/5 set: a uniform sample without
replacement of size min(S, |set|). Work is at most S ids per positive (user, item, slice)
triple whatever the degree distribution, none where e is m's only neighbour: each triple
carries its neighbour's sketch to the entity's partition once.

Two departures from independent uniform samples, both deliberate and recorded:
  * The 2-hop union runs over at most ``index.neighbor_cap`` of the entity's 1-hop
    neighbours (the first ``cap`` in its interaction-set order, a uniform subset); entities
    with more neighbours get a uniform sample of the union over that subset, which favours
    co-neighbours reachable through many neighbours. ``capped_lists`` in the manifest counts
    them. This bounds the size of one hub's sort, not the total work (already bounded).
  * Co-sets of different entities in the same slice share h, so their samples are
    coordinated: a member with a small h(member, t) is picked by every co-set holding it.
    Each set alone is uniform; across sets the draws are positively correlated. This is the
    price of computing unions from bounded sketches.

Resampling to exactly S (paper Section 4.1.1, "Implementation Details"): k > S members -> the
sample above; 1 <= k < S -> the k members followed by S-k draws with replacement from them
(draw j picks member ``pmod(xxhash64(fill_salt, entity, slice, j), k)``); k = 0 -> no row for
an interaction set, S zeros (the "empty" id) for an empty co-set in a stored row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_jobs.negatives import splitmix64

ID_MASK = 0xFFFFFFFF  # member ids live in the low 32 bits of a packed (hash, id) long


@dataclass(frozen=True)
class Salts:
    """Independent hash streams derived from ``index.seed`` (one per random choice)."""

    order: int  # random order of an entity's 1-hop list (interaction sample, cap)
    user_sketch: int  # h(user, slice) for sketches of item lists
    item_sketch: int  # h(item, slice) for sketches of user lists
    fill: int  # with-replacement fill of sets smaller than S

    @classmethod
    def of(cls, seed: int) -> Salts:
        return cls(order=seed * 4 + 1, user_sketch=seed * 4 + 2, item_sketch=seed * 4 + 3,
                   fill=seed * 4 + 4)


@dataclass(frozen=True)
class Side:
    """One side of the bipartite graph: ``entity`` rows whose 1-hop lists hold ``member`` ids."""

    entity: str  # "user" or "item"
    member: str  # the other one
    entity_sketch_salt: int  # salt of h(entity, slice): what the members' sketches use


def sides(salts: Salts) -> tuple[Side, Side]:
    """(user side, item side)."""
    return Side("user", "item", salts.user_sketch), Side("item", "user", salts.item_sketch)


def _packed(hash_col: Column, id_col: Column) -> Column:
    """(hash << 32) | id: sorting the longs sorts by hash, and equal ids stay equal."""
    return F.shiftleft(hash_col, 32).bitwiseOR(id_col.cast("long"))


def fill_to_size(arr: Column, entity: Column, slc: Column, size: int, salt: int) -> Column:
    """Resample a non-empty list of k distinct ids to exactly ``size`` (k <= size).

    Args:
        arr: array<int> of k >= 1 distinct ids, already cut to at most ``size``.
        entity, slc: the set's key, seeding the with-replacement draws.
        size: S.
        salt: hash salt of the fill draws.

    Returns:
        array<int> of length S: the k ids, then S-k draws with replacement from them.
    """
    k = F.size(arr)
    draws = F.transform(
        F.sequence(F.lit(1), F.lit(size) - k),
        lambda j: F.element_at(arr, F.pmod(F.xxhash64(F.lit(salt), entity, slc, j), k).cast("int") + 1),
    )
    return F.when(k >= size, arr).otherwise(F.concat(arr, draws))


def side_sets(pos: DataFrame, side: Side, salts: Salts, size: int, cap: int,
              partitions: int) -> DataFrame:
    """Per (entity, slice): interaction set (Eq. 2/3), co-interaction set (Eq. 4/5), degree.

    Two vectorised numpy passes (``mapInArrow``) with one shuffle between them, so neither a
    positive triple nor a sketch goes through a sort-merge join or an interpreted array sort:

    1. on ``pos``, partitioned by (member, slice): every triple gets its member's bottom-S
       sketch of the member's other entities (``neighbour_batch``);
    2. shuffled by (entity, slice): the entity's interaction set (first S of its members in
       its random order), degree, and co-set from the first ``cap`` neighbours' sketches
       (``sets_batch``).

    Args:
        pos: distinct positive (user, item, slice) triples, hash-partitioned by
            (side.member, slice): a partition holds every triple of its (member, slice) keys.
        side: which side's sets to build.
        salts: hash salts.
        size: S.
        cap: index.neighbor_cap, the most 1-hop neighbours whose sketches enter the union.
        partitions: of the shuffle by (entity, slice); numpy holds one partition at a time.

    Returns:
        DataFrame[entity int, slice short, interaction array<int>[S], co_interaction
        array<int>[S] (S zeros when the set is empty), degree long (|G_t(entity)|)], one row
        per non-empty interaction set, hash-partitioned by (entity, slice) and sorted by
        (entity, slice) within each partition.
    """
    e, m, slc = F.col(side.entity), F.col(side.member), F.col("slice")
    triples = pos.select(
        m.alias("member"), e.alias("entity"), "slice",
        # the member's place in the entity's random order (interaction sample and cap)
        _packed(F.xxhash64(F.lit(salts.order), e, m, slc), m).alias("o"),
        # h(entity, slice): the entity's place in every member's sketch
        _packed(F.xxhash64(F.lit(side.entity_sketch_salt), e, slc), e).alias("h"))
    fill_seed = salts.fill + 1
    neighbours = triples.mapInArrow(
        _whole_partitions(lambda t: neighbour_batch(t, size)), NEIGHBOUR_SCHEMA)
    sets = neighbours.repartition(partitions, "entity", "slice").mapInArrow(
        _whole_partitions(lambda t: sets_batch(t, size, cap, fill_seed)), SETS_SCHEMA)
    return sets.select(
        "entity", "slice",
        fill_to_size(F.col("interaction"), F.col("entity"), slc, size, salts.fill)
        .alias("interaction"),
        "co_interaction", "degree")


# The sketch travels as the raw bytes of its int64 values: Spark copies a binary value into
# its shuffle rows in one piece, where an array<long> is converted element by element
# (measured: ~5% less time for a sets table at 10M rows).
NEIGHBOUR_SCHEMA = "entity int, slice short, o long, sketch binary"
SETS_SCHEMA = ("entity int, slice short, interaction array<int>, co_interaction array<int>, "
               "degree long")
BATCH_ROWS = 1 << 16  # rows per Arrow batch handed back to Spark


def _whole_partitions(fn):
    """A ``mapInArrow`` function running ``fn`` on a whole partition at once (a partition
    holds whole groups), handing the result back in bounded batches."""
    def run(batches):
        parts = [b for b in batches if b.num_rows]
        if parts:
            out = fn(pa.Table.from_batches(parts).combine_chunks())
            yield from pa.Table.from_batches([out]).to_batches(max_chunksize=BATCH_ROWS)
    return run


def _groups(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For sorted keys: (start of each group, group of each row, rank of each row in it)."""
    new = np.empty(len(key), dtype=bool)
    new[:1] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    return starts, group, np.arange(len(key)) - starts[group]


def _gather(values: np.ndarray, first: np.ndarray,
            lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``values[first[i] : first[i] + lengths[i]]`` over i: (flat values, offsets)."""
    offsets = np.r_[0, np.cumsum(lengths)]
    return values[np.repeat(first - offsets[:-1], lengths) + np.arange(offsets[-1])], offsets


def neighbour_batch(table: pa.Table, size: int) -> pa.RecordBatch:
    """Every triple of ``table`` with its member's sketch for that entity (whole groups only).

    The sketch a triple (entity e, member m) carries is the S smallest h of m's list other
    than e itself: min(degree(m) - 1, S) ids, none when e is m's only neighbour. That is all
    the co-set of e needs (module docstring), one id less per triple than the bottom-(S+1).

    Args:
        table: member int32, entity int32, slice int16, o int64 (packed order of the member in
            the entity's list), h int64 (packed ``h(entity, slice) << 32 | entity``).
        size: S.

    Returns:
        RecordBatch of NEIGHBOUR_SCHEMA, a row per triple: entity, slice, o, and the S
        smallest h of the triple's (member, slice) group without the triple's own entity.
    """
    slc = table.column("slice").to_numpy()
    key = (table.column("member").to_numpy().astype(np.int64) << 16) | slc.astype(np.int64)
    h = table.column("h").to_numpy()
    row = np.lexsort((h, key))  # by group, then h: a triple's own h sits at its rank
    starts, group, rank = _groups(key[row])
    length = np.minimum(np.diff(np.r_[starts, len(row)]) - 1, size)[group]
    offsets = np.r_[0, np.cumsum(length)]
    j = np.arange(offsets[-1]) - np.repeat(offsets[:-1], length)  # place in the sketch
    own = np.repeat(rank, length)
    sketch = h[row][np.repeat(starts[group], length) + j + (j >= own)]  # skip the own h
    return pa.RecordBatch.from_arrays(
        [pa.array(table.column("entity").to_numpy()[row]), pa.array(slc[row]),
         pa.array(table.column("o").to_numpy()[row]),
         pack_int64(sketch, offsets)],
        names=["entity", "slice", "o", "sketch"])


def pack_int64(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Variable-length int64 lists as one binary value each: list i is
    ``values[offsets[i]:offsets[i+1]]`` in native byte order."""
    return pa.Array.from_buffers(
        pa.binary(), len(offsets) - 1,
        [None, pa.py_buffer((offsets * 8).astype(np.int32)),
         pa.py_buffer(np.ascontiguousarray(values, dtype=np.int64))])


def unpack_int64(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`pack_int64` for a binary or large_binary column: (values,
    offsets into values, one more than rows)."""
    width = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    _, offset_buf, data = column.buffers()
    offsets = np.frombuffer(offset_buf, dtype=width)[column.offset:column.offset + len(column) + 1]
    values = np.frombuffer(data, dtype=np.int64) if data is not None else np.empty(0, np.int64)
    return values, offsets.astype(np.int64) // 8


def sets_batch(table: pa.Table, size: int, cap: int, fill_seed: int) -> pa.RecordBatch:
    """Interaction and co-interaction sets of every (entity, slice) group in ``table``.

    Args:
        table: NEIGHBOUR_SCHEMA rows (whole groups only): entity int32, slice int16, o int64
            (packed order of the neighbour), sketch binary (the neighbour's packed
            ``h << 32 | id`` bottom-S without the entity, as :func:`pack_int64` bytes).
        size: S.
        cap: most neighbours per group, the smallest ``o`` first.
        fill_seed: seed of the co-set's with-replacement fill.

    Returns:
        RecordBatch of SETS_SCHEMA, one row per group in (entity, slice) order: the first
        min(S, degree) neighbours by ``o`` (filled to S later, in Spark), the S smallest-h
        distinct ids of the capped sketch union minus the entity (filled to S with
        replacement, or S zeros if empty), and the degree.
    """
    ent = table.column("entity").to_numpy().astype(np.int64)
    slc = table.column("slice").to_numpy().astype(np.int64)
    key = (ent << 16) | slc
    o = table.column("o").to_numpy()
    row = np.lexsort((o, key))
    key = key[row]
    starts, group, rank = _groups(key)
    gkey = key[starts]  # (G,)
    degree = np.diff(np.r_[starts, len(key)])
    first_s = rank < size
    interaction = pa.ListArray.from_arrays(
        pa.array(np.r_[0, np.cumsum(np.minimum(degree, size))].astype(np.int32)),
        pa.array((o[row][first_s] & ID_MASK).astype(np.int32)))
    kept = rank < cap
    co = _co_sets(table.column("sketch").chunk(0), row[kept], group[kept], gkey, size, fill_seed)
    n_groups = len(gkey)
    return pa.RecordBatch.from_arrays(
        [pa.array((gkey >> 16).astype(np.int32)), pa.array((gkey & 0xFFFF).astype(np.int16)),
         interaction,
         pa.ListArray.from_arrays(pa.array(np.arange(n_groups + 1, dtype=np.int32) * size),
                                  pa.array(co.ravel())),
         pa.array(degree.astype(np.int64))],
        names=["entity", "slice", "interaction", "co_interaction", "degree"])


def _co_sets(sketch: pa.Array, rows: np.ndarray, rgroup: np.ndarray, gkey: np.ndarray,
             size: int, fill_seed: int) -> np.ndarray:
    """(G, S) int32 co-sets: per group, the S smallest-h distinct ids in the sketches of
    ``rows`` (rgroup: their group; sketches already exclude the group's entity), filled to
    S."""
    values, offsets = unpack_int64(sketch)
    lengths = offsets[rows + 1] - offsets[rows]
    packed, _ = _gather(values, offsets[rows], lengths)  # the capped union
    egroup = np.repeat(rgroup, lengths)
    order = np.lexsort((packed, egroup))  # by group, then h (then id)
    packed, egroup = packed[order], egroup[order]
    first_of = np.r_[True, (egroup[1:] != egroup[:-1]) | (packed[1:] != packed[:-1])]
    packed, egroup = packed[first_of], egroup[first_of]
    _, _, rank = _groups(egroup)
    top = rank < size
    n_groups = len(gkey)
    out = np.zeros((n_groups, size), dtype=np.int32)
    out[egroup[top], rank[top]] = (packed[top] & ID_MASK).astype(np.int32)
    k = np.bincount(egroup[top], minlength=n_groups)  # (G,) distinct members kept
    # Sets of 1 <= k < S: columns k.. are draws with replacement from the first k.
    col = np.arange(size, dtype=np.uint64)
    bits = splitmix64(splitmix64(gkey.astype(np.uint64) ^ np.uint64(fill_seed))[:, None] ^ col)
    pick = (bits % np.maximum(k, 1).astype(np.uint64)[:, None]).astype(np.int64)
    fill = (col[None, :] >= k[:, None].astype(np.uint64)) & (k[:, None] > 0)
    return np.where(fill, np.take_along_axis(out, pick, axis=1), out)


def exact_sets(pos: DataFrame) -> tuple[DataFrame, DataFrame]:
    """The un-resampled sets of Eq. 2-5 per slice, for checking the sampled ones (tests, audits).

    Quadratic on hubs: only for small data.

    Args:
        pos: distinct positive (user, item, slice) triples.

    Returns:
        (users, items): DataFrame[entity, slice, interaction array (sorted), co_interaction
        array (sorted, may be empty)] for each side.
    """
    out = []
    for entity, member in (("user", "item"), ("item", "user")):
        hop = pos.select(F.col(entity).alias("e"), F.col(member).alias("m"), "slice")
        back = pos.select(F.col(member).alias("m"), F.col(entity).alias("e2"), "slice")
        two = hop.join(back, ["m", "slice"]).where("e2 != e")
        inter = hop.groupBy("e", "slice").agg(F.array_sort(F.collect_set("m")).alias("interaction"))
        co = two.groupBy("e", "slice").agg(F.array_sort(F.collect_set("e2")).alias("co_interaction"))
        table = inter.join(co, ["e", "slice"], "left").select(
            F.col("e").alias("entity"), "slice", "interaction",
            F.coalesce("co_interaction", F.array().cast("array<int>")).alias("co_interaction"))
        out.append(table)
    return out[0], out[1]
