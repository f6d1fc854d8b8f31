"""A gateway instance's health probe, as Azure's answers `https://<public IP>:8081/healthprobe`
[TSCC]: HTTPS with a self-signed certificate, the XML string that names the primary
instance. Run by the runtime in the instance's node (`python3 healthprobe.py ADDRESS PORT
CERT KEY TEXT`), where the node image has only the standard library: this file imports
nothing of vpnlab."""
import http.server
import ssl
import sys
from xml.sax.saxutils import escape

BODY = '<?xml version="1.0"?><string xmlns="http://schemas.microsoft.com/2003/10/Serialization/">{}</string>'


def main(address: str, port: str, cert: str, key: str, text: str):
    body = BODY.format(escape(text)).encode()

    class Probe(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            found = self.path.split("?")[0] == "/healthprobe"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *args):       # one line per request is noise in the node's log
            pass

    server = http.server.ThreadingHTTPServer((address, int(port)), Probe)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"health probe on https://{address}:{port}/healthprobe: {text}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:6])
