"""
One DNS A query over UDP (RFC 1035, stdlib only), for checking what Consul's
DNS interface answers in tests and the demo:

    rcode, addresses = query(agent.ports["dns"], "db.prod.gg.mydc1.query.consul")
"""

import random
import socket
import struct


def query(port, name, host="127.0.0.1", timeout=3.0):
    """``(rcode, sorted [addresses])``; rcode 0 is NOERROR, 3 is NXDOMAIN."""
    qid = random.randint(0, 0xFFFF)
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # recursion desired, one question
    qname = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.rstrip(".").split("."))
    packet = header + qname + b"\x00" + struct.pack(">HH", 1, 1)  # type A, class IN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (host, port))
        data, _ = sock.recvfrom(65535)
    rid, flags, qdcount, ancount, _, _ = struct.unpack(">HHHHHH", data[:12])
    if rid != qid:
        raise ValueError(f"DNS answer id {rid} does not match query id {qid}")

    def skip_name(off):
        while True:
            length = data[off]
            if length == 0:
                return off + 1
            if length & 0xC0 == 0xC0:  # a compression pointer ends the name
                return off + 2
            off += 1 + length

    off = 12
    for _ in range(qdcount):
        off = skip_name(off) + 4
    addresses = []
    for _ in range(ancount):
        off = skip_name(off)
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[off : off + 10])
        off += 10
        if rtype == 1:
            addresses.append(socket.inet_ntoa(data[off : off + rdlen]))
        off += rdlen
    return flags & 0xF, sorted(addresses)
