#!/usr/bin/env python3
"""A plain-MQTT -> mTLS shim for conformance suites that only speak plain TCP.
Reads each client's CONNECT, picks the certificate whose CN is that client id
(<PKI>/<id>.crt/.key; an id with no certificate is sent without one, an empty id with the
certificate of --anonymous ID if given), opens mTLS to the broker and pipes both ways.
--listen 0 picks a free port. Prints 'listening on PORT' once it accepts connections.
Usage: tls_shim.py --listen PORT --broker PORT --pki DIR [--anonymous ID]"""
import argparse, asyncio, os, ssl

ap = argparse.ArgumentParser()
ap.add_argument("--listen", type=int, required=True)
ap.add_argument("--broker", type=int, required=True)
ap.add_argument("--host", default="localhost")
ap.add_argument("--pki", required=True)
ap.add_argument("--anonymous", default="")
a = ap.parse_args()

async def read_packet(r):
    first = await r.readexactly(1)
    mult, length, raw = 1, 0, b""
    while True:
        b = await r.readexactly(1); raw += b
        length += (b[0] & 0x7F) * mult; mult *= 128
        if not b[0] & 0x80: break
    return first + raw + await r.readexactly(length), first + raw

def client_id(pkt, hdr_len):
    body = pkt[hdr_len:]
    n = int.from_bytes(body[0:2], "big"); i = 2 + n
    level = body[i]; i += 1 + 1 + 2
    if level == 5:
        mult, plen = 1, 0
        while True:
            b = body[i]; i += 1; plen += (b & 0x7F) * mult; mult *= 128
            if not b & 0x80: break
        i += plen
    n = int.from_bytes(body[i:i+2], "big")
    return body[i+2:i+2+n].decode("utf-8", "replace")

async def pipe(r, w):
    try:
        while True:
            d = await r.read(65536)
            if not d: break
            w.write(d); await w.drain()
    except Exception:
        pass
    finally:
        try: w.close()
        except Exception: pass

async def handle(cr, cw):
    try:
        pkt, hdr = await read_packet(cr)
        cid = client_id(pkt, len(hdr))
        ctx = ssl.create_default_context(cafile=os.path.join(a.pki, "ca.crt"))
        ctx.check_hostname = False
        name = cid or a.anonymous
        crt = os.path.join(a.pki, name + ".crt")
        if name and os.path.exists(crt):
            ctx.load_cert_chain(crt, os.path.join(a.pki, name + ".key"))
        br, bw = await asyncio.open_connection(a.host, a.broker, ssl=ctx)
        bw.write(pkt); await bw.drain()
        await asyncio.gather(pipe(cr, bw), pipe(br, cw))
    except Exception:
        cw.close()

async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", a.listen)
    print("listening on %d" % srv.sockets[0].getsockname()[1], flush=True)
    async with srv: await srv.serve_forever()

asyncio.run(main())
