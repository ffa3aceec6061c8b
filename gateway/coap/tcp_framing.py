"""The TCP/TLS form of a CoAP message (RFC 8323 §3.2) and the framer that cuts a byte
stream into messages.

A frame has a length nibble (with 0-4 extension bytes), the token length, the code, the
token and the option block; there is no type and no message ID. :class:`TcpFramer` is the
only state here: it buffers at most one incomplete frame, never more than its size limit.
"""

from __future__ import annotations

from gateway.coap.errors import CoapFormatError, CoapUsageError, MessageTooLarge
from gateway.coap.message import DEFAULT_MAX_MESSAGE_SIZE, CoapMessage, unchecked_message
from gateway.coap.option_codec import decode_options, encode_options

#: The largest TCP frame the framer will ever buffer, whatever the configuration.
TCP_HARD_MAX_MESSAGE_SIZE = 64 * 1024
_EXT_LEN_BYTES = {13: 1, 14: 2, 15: 4}
_EXT_LEN_OFFSET = {13: 13, 14: 269, 15: 65805}


def tcp_frame_length(data: bytes | bytearray, pos: int = 0) -> int | None:
    """Total length of the frame starting at ``pos``, or None while its header is incomplete.

    Raises :class:`CoapFormatError` for a token length above 8.
    """
    if len(data) <= pos:
        return None
    first = data[pos]
    nibble = first >> 4
    tkl = first & 0x0F
    if tkl > 8:
        raise CoapFormatError(f"token length {tkl}")
    if nibble < 13:
        return 2 + tkl + nibble
    ext = _EXT_LEN_BYTES[nibble]
    if len(data) < pos + 1 + ext:
        return None
    body = int.from_bytes(data[pos + 1:pos + 1 + ext], "big") + _EXT_LEN_OFFSET[nibble]
    return 2 + ext + tkl + body


def decode_tcp(data: bytes) -> tuple[CoapMessage, int]:
    """Decode the frame at the start of ``data``; returns the message and the bytes used.

    Raises :class:`CoapFormatError` when the frame is malformed or not complete yet.
    """
    if type(data) is not bytes:
        data = bytes(data)
    size = tcp_frame_length(data)
    if size is None or len(data) < size:
        raise CoapFormatError("truncated frame")
    return _decode_tcp_frame(data[:size] if size != len(data) else data), size


def _decode_tcp_frame(frame: bytes) -> CoapMessage:
    first = frame[0]
    nibble = first >> 4
    head = 1 + _EXT_LEN_BYTES.get(nibble, 0)
    tkl = first & 0x0F
    code = frame[head]
    pos = head + 1 + tkl
    options, payload = decode_options(frame, pos)
    return unchecked_message(None, code, 0, frame[head + 1:pos], options, payload)


def encode_tcp(msg: CoapMessage) -> bytes:
    body = bytearray()
    if msg.options:
        encode_options(msg.options, body)
    if msg.payload:
        body.append(0xFF)
        body += msg.payload
    size = len(body)
    tkl = len(msg.token)
    if size < 13:
        head = bytes((size << 4 | tkl, msg.code))
    elif size < 269:
        head = bytes((0xD0 | tkl, size - 13, msg.code))
    elif size < 65805:
        head = bytes((0xE0 | tkl,)) + (size - 269).to_bytes(2, "big") + bytes((msg.code,))
    else:
        head = bytes((0xF0 | tkl,)) + (size - 65805).to_bytes(4, "big") + bytes((msg.code,))
    return head + msg.token + body


class TcpFramer:
    """Cuts a TCP/TLS byte stream into CoAP messages (RFC 8323 §3.2).

    It holds at most one incomplete frame. A header announcing a frame larger than
    ``max_message_size`` (the whole frame, header included, as RFC 8323 §5.3.1 counts it)
    raises :class:`MessageTooLarge` before any of its body is buffered. After any error the
    stream cannot be resynchronized: the framer stays failed and the connection must be
    aborted.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if not 16 <= max_message_size <= TCP_HARD_MAX_MESSAGE_SIZE:
            raise CoapUsageError(
                f"max_message_size must be 16..{TCP_HARD_MAX_MESSAGE_SIZE}: {max_message_size}")
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._error: CoapFormatError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[CoapMessage]:
        """Add received bytes; return every message they complete, in order.

        On a malformed or oversized frame this raises; messages completed earlier in the same
        call are lost with the connection.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        messages: list[CoapMessage] = []
        pos = 0
        try:
            while True:
                size = tcp_frame_length(buffer, pos)
                if size is None:
                    break
                if size > self.max_message_size:
                    raise MessageTooLarge(size, self.max_message_size)
                if len(buffer) - pos < size:
                    break
                messages.append(_decode_tcp_frame(bytes(buffer[pos:pos + size])))
                pos += size
        except CoapFormatError as exc:
            self._error = exc
            buffer.clear()
            raise
        del buffer[:pos]
        return messages
