"""The pre-pass over a checkpoint's pickle: its opcodes checked against a model of the
unpickler's stack before anything is built (:func:`scan_pickle`), with the limits it enforces.

Why the opcode loop is one long function: it runs once per opcode, about 12 million times for
a Lightning checkpoint of 100k tensors with Adam state, and its stack model lives in local
variables. A dispatch table of handler functions would pay a call per opcode; even one call with
the model's state on the loop's slow path only (about 9 % of the opcodes) made it 3-5 % slower
(3.90 -> 4.03 s, best of 3, on ``scripts/bench_checkpoint_reader.py``'s 100k-tensor pickle), so
only what runs around the loop (the opcode tables, memo indexes, the error texts) is split out.
The loop handles the most frequent opcodes first on fast paths, then every other opcode through
:func:`_opcode_table` (its argument size and its effect on the stack).
"""

from __future__ import annotations

import functools
import pickle

#: Objects the pickle may create (each opcode that pushes onto the stack counts, references
#: included). A Lightning checkpoint of 100k tensors with Adam state pushes about 9 million.
MAX_PICKLE_OBJECTS = 20_000_000
#: Containers (lists, dicts, sets, tuples, called globals) among them; that checkpoint has 2.3
#: million.
MAX_PICKLE_CONTAINERS = 6_000_000
#: Tuples and frozensets nested deeper than this are refused: CPython hashes a tuple by recursing
#: in C without a depth check, so a dict key nested a million deep crashes the process.
MAX_TUPLE_NESTING = 100

# What each opcode does to the stack, for scan_pickle's model of it.
(
    _ATOM,
    _CONTAINER,
    _TUPLE_N,
    _TUPLE_MARK,
    _LIST_MARK,
    _POP_N,
    _POP_N_PUSH,
    _POP_MARK_ONLY,
    _GET,
    _PUT,
    _MEMOIZE,
    _DUP,
    _MARK,
    _POP,
    _PERSID,
    _KEEP,
    _NOTHING,
    _STOP,
    _SETITEM,
) = range(19)


@functools.cache
def _opcode_table() -> tuple[tuple[int, int, int] | None, ...]:
    """Opcode byte -> (argument size, effect, count), None if unknown.

    The argument size follows pickletools' convention (< 0 for variable); ``count`` is how many
    items the effect pops, where it pops a fixed number.
    """
    import pickletools

    effects: dict[str, tuple[int, int]] = {
        "EMPTY_LIST": (_CONTAINER, 0),
        "EMPTY_DICT": (_CONTAINER, 0),
        "EMPTY_SET": (_CONTAINER, 0),
        "BYTEARRAY8": (_CONTAINER, 0),
        "TUPLE1": (_TUPLE_N, 1),
        "TUPLE2": (_TUPLE_N, 2),
        "TUPLE3": (_TUPLE_N, 3),
        "TUPLE": (_TUPLE_MARK, 0),
        "FROZENSET": (_TUPLE_MARK, 0),
        "LIST": (_LIST_MARK, 0),
        "DICT": (_LIST_MARK, 0),
        "INST": (_LIST_MARK, 0),
        "OBJ": (_LIST_MARK, 0),
        "APPEND": (_POP_N, 1),
        "SETITEM": (_SETITEM, 2),
        "APPENDS": (_POP_MARK_ONLY, 0),
        "SETITEMS": (_POP_MARK_ONLY, 0),
        "ADDITEMS": (_POP_MARK_ONLY, 0),
        "POP_MARK": (_POP_MARK_ONLY, 0),
        "REDUCE": (_POP_N_PUSH, 2),
        "NEWOBJ": (_POP_N_PUSH, 2),
        "NEWOBJ_EX": (_POP_N_PUSH, 3),
        "STACK_GLOBAL": (_POP_N_PUSH, 2),
        "BUILD": (_POP_N, 1),
        "GET": (_GET, 0),
        "BINGET": (_GET, 0),
        "LONG_BINGET": (_GET, 0),
        "PUT": (_PUT, 0),
        "BINPUT": (_PUT, 0),
        "LONG_BINPUT": (_PUT, 0),
        "MEMOIZE": (_MEMOIZE, 0),
        "DUP": (_DUP, 0),
        "MARK": (_MARK, 0),
        "POP": (_POP, 0),
        # The legacy format's ("module", cls, source) persistent id yields one of its items.
        "BINPERSID": (_PERSID, 1),
        "READONLY_BUFFER": (_KEEP, 1),
        "READWRITE_BUFFER": (_KEEP, 1),
        "PROTO": (_NOTHING, 0),
        "FRAME": (_NOTHING, 0),
        "STOP": (_STOP, 0),
    }
    table: list[tuple[int, int, int] | None] = [None] * 256
    for op in pickletools.opcodes:
        size = op.arg.n if op.arg is not None else 0
        if op.code in "ci":  # GLOBAL and INST take two newline-terminated lines
            size = _TWO_LINES
        effect, count = effects.get(op.name, (_ATOM, 0))  # the rest push one new atom
        table[ord(op.code)] = (size, effect, count)
    return tuple(table)


_TWO_LINES = -100
_LENGTH_WIDTHS = {-2: 1, -3: 4, -4: 4, -5: 8}  # pickletools' TAKEN_FROM_ARGUMENT{1,4,4U,8U}


def scan_pickle(data: bytes, start: int = 0) -> int:
    """Check the opcodes of the pickle at ``data[start:]`` without running any; return its end.

    A model of the unpickler's stack finds, before anything is built:

    - memo indexes beyond the count of opcodes so far (CPython's C unpickler grows its memo to the
      largest index a PUT names: a five-byte ``LONG_BINPUT 2**30`` allocates 16 GiB);
    - more than :data:`MAX_PICKLE_OBJECTS` objects or :data:`MAX_PICKLE_CONTAINERS` containers (a
      few hundred compressed bytes of ``EMPTY_LIST`` would become gigabytes of lists);
    - tuples or frozensets nested deeper than :data:`MAX_TUPLE_NESTING` (exact: they are immutable,
      so the depth of every stack and memo slot is known).

    Raises :class:`pickle.UnpicklingError` with a one-line reason (it says "truncated" when the
    data ends first).

    The loop is one function on purpose (radon grades it F): a handler call per opcode would cost
    more than the 5 % the reader's benchmark allows; the module docstring gives the figures.
    """
    table, fast_atoms = _opcode_table(), _fast_atoms()
    find, end = data.find, len(data)
    pos = start
    # Per stack slot, the tuple nesting of what it holds (0 for anything but a tuple or frozenset);
    # memo slots likewise, only the non-zero ones kept. A memo index cannot exceed the number of
    # opcodes so far, which ``pos`` bounds (an opcode is at least a byte).
    stack: list[int] = []
    push = stack.append
    marks: list[int] = []
    memo: dict[int, int] = {}
    memo_len = pushes = containers = 0
    fence = 0  # the unpickler never pops below the last mark
    while pos < end:
        code = data[pos]
        # Fast paths, most frequent first, for what real checkpoints are mostly made of.
        size = fast_atoms[code]
        if size >= 0:  # an atom with a fixed-size argument (BININT1, NEWFALSE, EMPTY_TUPLE, ...)
            pos += size + 1
            pushes += 1
            if pushes > MAX_PICKLE_OBJECTS:
                break
            push(0)
            continue
        if code == _LONG_BINPUT or code == _BINPUT:
            at = pos
            pos += 5 if code == _LONG_BINPUT else 2
            if pos > end:
                break
            index = int.from_bytes(data[at + 1 : pos], "little")
            if index > at:
                raise pickle.UnpicklingError(f"memo index out of range at byte {at}")
            if len(stack) <= fence:
                raise pickle.UnpicklingError(f"PUT on an empty stack at byte {at}")
            if stack[-1]:
                memo[index] = stack[-1]
            elif memo:
                memo.pop(index, None)
            continue
        if code == _BINGET or code == _LONG_BINGET:
            at = pos
            pos += 2 if code == _BINGET else 5
            pushes += 1
            if pushes > MAX_PICKLE_OBJECTS:
                break
            push(memo.get(int.from_bytes(data[at + 1 : pos], "little"), 0) if memo else 0)
            continue
        if code == _BINUNICODE:
            pos += 5 + int.from_bytes(data[pos + 1 : pos + 5], "little")
            pushes += 1
            if pushes > MAX_PICKLE_OBJECTS:
                break
            push(0)
            continue
        if code == _MARK_CODE:
            pos += 1
            fence = len(stack)
            marks.append(fence)
            pushes += 1
            if pushes > MAX_PICKLE_OBJECTS:
                break
            continue
        if code == _REDUCE and len(stack) - 2 >= fence:  # a call's result is never a nested tuple
            pos += 1
            del stack[-1]
            stack[-1] = 0
            pushes += 1
            containers += 1
            if containers > MAX_PICKLE_CONTAINERS:
                break
            continue
        if code == _TUPLE_CODE and marks:
            pos += 1
            mark = marks.pop()
            fence = marks[-1] if marks else 0
            depth = 1
            if len(stack) > mark:
                depth += max(stack[mark:])
                del stack[mark:]
            if depth > MAX_TUPLE_NESTING:
                raise pickle.UnpicklingError(_too_deep(pos - 1))
            push(depth)
            pushes += 1
            containers += 1
            if containers > MAX_PICKLE_CONTAINERS:
                break
            continue
        entry = table[code]
        if entry is None:
            raise pickle.UnpicklingError(f"invalid opcode {bytes([code])!r} at byte {pos}")
        at = pos
        pos += 1
        size, effect, count = entry
        if size == 0:
            pass
        elif size > 0:
            pos += size
        elif size == -1:  # up to a newline
            line_end = find(b"\n", pos)
            if line_end < 0:
                break
            pos = line_end + 1
        elif size == _TWO_LINES:
            first = find(b"\n", pos)
            line_end = find(b"\n", first + 1) if first >= 0 else -1
            if line_end < 0:
                break
            pos = line_end + 1
        else:  # a length of 1, 4 (signed or not) or 8 bytes, then that many bytes
            width = _LENGTH_WIDTHS[size]
            length = int.from_bytes(data[pos : pos + width], "little", signed=size == -3)
            if length < 0:
                raise pickle.UnpicklingError(f"negative length at byte {at}")
            pos += width + length
        if pos > end:
            break
        if effect == _ATOM:
            push(0)
            pushes += 1
        elif effect == _TUPLE_N or effect == _TUPLE_MARK:
            if effect == _TUPLE_MARK:
                if not marks:
                    raise pickle.UnpicklingError(f"no MARK before byte {at}")
                count = len(stack) - marks.pop()
            elif len(stack) - count < fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            depth = 1
            if count:
                depth += max(stack[-count:])
                del stack[-count:]
                if depth > MAX_TUPLE_NESTING:
                    raise pickle.UnpicklingError(_too_deep(at))
            fence = marks[-1] if marks else 0
            push(depth)
            pushes += 1
            containers += 1
        elif effect == _POP_N_PUSH or effect == _PERSID or effect == _KEEP:
            if len(stack) - count < fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            # A call never returns a nested tuple (every callable is a stand-in or a placeholder
            # type); a legacy persistent id yields one of its own items.
            depth = stack[-1] if effect != _POP_N_PUSH else 0
            del stack[-count:]
            push(depth)
            pushes += 1
            containers += effect == _POP_N_PUSH
        elif effect == _POP_N or effect == _SETITEM:
            if len(stack) - count - 1 < fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            del stack[-count:]
        elif effect == _CONTAINER:
            push(0)
            pushes += 1
            containers += 1
        elif effect == _LIST_MARK or effect == _POP_MARK_ONLY:
            if not marks:
                raise pickle.UnpicklingError(f"no MARK before byte {at}")
            del stack[marks.pop() :]
            fence = marks[-1] if marks else 0
            if effect == _LIST_MARK:
                push(0)
                pushes += 1
                containers += 1
            elif code != _POP_MARK and not stack:  # APPENDS, SETITEMS, ADDITEMS need their target
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
        elif effect == _PUT or effect == _GET:
            index = _memo_index(code, data, at, pos)
            if effect == _GET:
                push(memo.get(index, 0))
                pushes += 1
            elif index > at:
                raise pickle.UnpicklingError(f"memo index out of range at byte {at}")
            elif len(stack) <= fence:
                raise pickle.UnpicklingError(f"PUT on an empty stack at byte {at}")
            elif stack[-1]:
                memo[index] = stack[-1]
            else:
                memo.pop(index, None)
        elif effect == _MEMOIZE:
            if len(stack) <= fence:
                raise pickle.UnpicklingError(f"MEMOIZE on an empty stack at byte {at}")
            if stack[-1]:
                memo[memo_len] = stack[-1]
            memo_len += 1
        elif effect == _DUP:
            if len(stack) <= fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            push(stack[-1])
            pushes += 1
        elif effect == _POP:
            if marks and marks[-1] == len(stack):
                marks.pop()
                fence = marks[-1] if marks else 0
            elif len(stack) <= fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            else:
                stack.pop()
        elif effect == _STOP:
            return pos
        if pushes > MAX_PICKLE_OBJECTS or containers > MAX_PICKLE_CONTAINERS:
            break
    # Every fast path that counts breaks out of the loop when a count is over its limit.
    raise pickle.UnpicklingError(_why_stopped(pushes, containers))


def _why_stopped(pushes: int, containers: int) -> str:
    """Why :func:`scan_pickle`'s loop ended before a STOP opcode."""
    if pushes > MAX_PICKLE_OBJECTS:
        return f"creates more than {MAX_PICKLE_OBJECTS:,} objects"
    if containers > MAX_PICKLE_CONTAINERS:
        return f"creates more than {MAX_PICKLE_CONTAINERS:,} containers"
    return "pickle data was truncated"


def _too_deep(at: int) -> str:
    return f"a tuple or frozenset nested deeper than {MAX_TUPLE_NESTING} levels at byte {at}"


def _memo_index(code: int, data: bytes, at: int, after: int) -> int:
    """The memo index of the GET or PUT at ``data[at:after]``."""
    if code in _LINE_MEMO_OPS:  # a decimal line, newline included
        line = data[at + 1 : after - 1]
        try:
            if len(line) > 24:
                raise ValueError
            return int(line)
        except ValueError:
            raise pickle.UnpicklingError(f"invalid memo index at byte {at}") from None
    return int.from_bytes(data[at + 1 : after], "little")


_LINE_MEMO_OPS = frozenset(b"gp")
(
    _BINUNICODE,
    _BINPUT,
    _LONG_BINPUT,
    _BINGET,
    _LONG_BINGET,
    _MARK_CODE,
    _POP_MARK,
    _REDUCE,
    _TUPLE_CODE,
) = b"Xqrhj(1Rt"


@functools.cache
def _fast_atoms() -> tuple[int, ...]:
    """Opcode byte -> size of its fixed argument if it pushes one new atom, else -1."""
    sizes = [-1] * 256
    for code, entry in enumerate(_opcode_table()):
        if entry is not None and entry[1] == _ATOM and entry[0] >= 0:
            sizes[code] = entry[0]
    return tuple(sizes)
