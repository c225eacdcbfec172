"""A Modbus server from pymodbus, the device the integration tests talk to.

    modbus_server.py tcp PORT UNITS [INPUTS]   e.g. tcp 0 1,2 (0: any free port)
    modbus_server.py rtu DEVICE UNITS [INPUTS] e.g. rtu /tmp/x/device 1 (9600 8N1)

Each listed unit id has 1,000 coils, discrete inputs, holding and input
registers, all zero except input registers 0..3 = 215, 480, 1, 2 (a
temperature in tenths, a humidity, and a 32-bit value across two
registers), or, for the units INPUTS names (JSON: {"2": [2301, 65535]}),
those values from input register 0. Ready once it prints "ready PORT" (the TCP port it listens on
(for `rtu`, the same units are served on a TCP port as well, so a test can
read back what arrived over the line); it runs until killed. Stopping it with SIGSTOP makes a
peer that stops answering; SIGCONT brings it back.
"""

import asyncio
import json
import socket
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer


def unit_context(first_inputs):
    # pymodbus addresses a block from 1 (its historical offset), hence the
    # leading zero.
    inputs = [0] + first_inputs
    inputs += [0] * (1001 - len(inputs))
    return ModbusDeviceContext(
        co=ModbusSequentialDataBlock(0, [False] * 1001),
        di=ModbusSequentialDataBlock(0, [False] * 1001),
        hr=ModbusSequentialDataBlock(0, [0] * 1001),
        ir=ModbusSequentialDataBlock(0, inputs),
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main():
    kind, where, units = sys.argv[1], sys.argv[2], sys.argv[3]
    given = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    devices = {
        int(u): unit_context(given.get(u, [215, 480, 1, 2])) for u in units.split(",")
    }
    context = ModbusServerContext(devices=devices, single=False)
    port = int(where) if kind == "tcp" and int(where) else free_port()
    servers = [StartAsyncTcpServer(context=context, address=("127.0.0.1", port))]
    if kind == "rtu":
        from pymodbus import FramerType

        servers.append(
            StartAsyncSerialServer(
                context=context, port=where, framer=FramerType.RTU, baudrate=9600
            )
        )
    tasks = [asyncio.create_task(server) for server in servers]
    await asyncio.sleep(0.3)
    print(f"ready {port}", flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main())
