"""P2's baseline: publish N points, each its own QoS 1 message, the way a
device SDK sends telemetry, and print the points per second once the broker
has acknowledged them all. Usage: paho_publish.py HOST PORT N"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
acked = threading.Semaphore(0)
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-baseline")
client.max_inflight_messages_set(32)
client.max_queued_messages_set(0)
client.on_publish = lambda *args: acked.release()
client.connect(host, port)
client.loop_start()
time.sleep(0.2)
start = time.perf_counter()
for i in range(n):
    payload = json.dumps({"time": time.time_ns(), "values": {"v": i * 0.5, "n": i}})
    client.publish("paho/telemetry", payload, qos=1)
for _ in range(n):
    acked.acquire()
elapsed = time.perf_counter() - start
client.loop_stop()
client.disconnect()
print(f"{n / elapsed:.0f}")
