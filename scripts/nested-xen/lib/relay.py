#!/usr/bin/env python3
"""Joins one guest connection (QEMU guestfwd gives it as stdin/stdout) to the
runner's control port on this machine's loopback. QEMU's user network runs
with restrict=on, so this relay is the VM's only way out, and it leads to one
loopback port: nothing the nested host sends can reach any other address."""
import os
import socket
import sys
import threading

sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))


def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            return
        sock.sendall(data)


threading.Thread(target=up, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    os.write(1, data)
