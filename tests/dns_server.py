"""A tiny authoritative DNS server on 127.0.0.1 (UDP, a free port) for `newsletter dkim check`.

Answers TXT queries from `records` (name -> list of records, each a list of strings, as a zone
file splits them); a name mapped to [] exists without TXT (NOERROR, no answer); any other name
is NXDOMAIN. `mode` = "servfail" answers SERVFAIL, "silent" answers nothing (a timeout).
Built with dnspython's message classes, so the client parses real DNS wire format.
"""

from __future__ import annotations

import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT


class DnsServer:
    def __init__(self) -> None:
        self.records: dict[str, list[list[bytes]]] = {}
        self.mode = "answer"
        self.queries: list[str] = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.port = int(self._socket.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def publish(self, name: str, value: str) -> None:
        """One TXT record, split in 255-character strings as a zone file would."""
        data = value.encode()
        self.records.setdefault(name.rstrip(".").lower(), []).append(
            [data[i : i + 255] for i in range(0, len(data), 255)]
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._socket.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, client = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                self._socket.sendto(reply, client)

    def _answer(self, data: bytes) -> bytes | None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        self.queries.append(name)
        if self.mode == "silent":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT and self.records[name]:
            rdatas = [
                TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings) for strings in self.records[name]
            ]
            response.answer.append(dns.rrset.from_rdata_list(question.name, 300, rdatas))
        limit = query.payload if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:  # the client must retry over TCP, which we do not serve
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()
