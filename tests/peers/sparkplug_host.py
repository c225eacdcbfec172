"""A Sparkplug B host application from pysparkplug, the peer the edge node talks to.

    sparkplug_host.py HOST PORT GROUP_ID [--host-id ID]   e.g. 127.0.0.1 1883 plant

It connects to the MQTT broker at HOST:PORT (MQTT 3.1.1, clean session, a
client id of its own) and subscribes at QoS 1 to spBv1.0/GROUP_ID/#. With
--host-id it is a Sparkplug 3.0 primary host application too: its will is
{"online": false, "timestamp": T} retained at QoS 1 on spBv1.0/STATE/ID, T
the connect time in ms; it subscribes to that topic as well, and once
subscribed publishes {"online": true, "timestamp": T} (the same T) there,
retained at QoS 1. It is ready once it prints the line "ready", always
its first line: subscribed and, with --host-id, the online STATE
acknowledged by the broker. Messages received before that (its own online
STATE, retained ones) print right after it.

Every message then received prints one JSON line. pysparkplug decodes it
(pysparkplug.Message.from_mqtt_message, given the last NBIRTH of the edge
node for NDATA/NCMD or DBIRTH of the device for DDATA/DCMD, as
pysparkplug's own client does, so that alias-only and datatype-less metrics
resolve; an NBIRTH forgets the node's DBIRTHs):

    {"type": "NBIRTH"|"NDATA"|"NDEATH"|"NCMD"|"DBIRTH"|"DDATA"|"DDEATH"|"DCMD",
     "group": G, "edge_node": E, "device": D or null,
     "timestamp": ms or null, "seq": n or null,
     "metrics": [{"name": N or null, "resolved_name": N or null,
                  "alias": n or null, "datatype": "DOUBLE", "value": V,
                  "timestamp": ms or null, "is_historical": bool,
                  "is_null": bool}, ...]}

"timestamp" and "seq" are the payload's fields, null when absent (read
from the message pysparkplug's protobuf schema parsed, since pysparkplug
turns an absent DDEATH seq into 0 and inverts NDEATH's timestamp). "name"
is the metric's name as sent, null for an alias-only metric;
"resolved_name" is the name pysparkplug resolved from the birth (the name
as sent when there is one). "datatype" is a pysparkplug DataType name
(INT8..INT64, UINT8..UINT64, FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT,
UUID, BYTES, FILE, INT8_ARRAY..DATETIME_ARRAY, UNKNOWN), taken from the
birth when the metric carries none. "value" is null when the metric has
none (is_null); DATETIME is ms since the epoch, BYTES and FILE are hex,
arrays are lists, a NaN or infinite float is "NaN", "Infinity" or
"-Infinity", and FLOAT is the 32-bit value widened (0.1 -> 0.10000000149011612).
NDEATH's metrics are pysparkplug's bd_seq_metric (the first metric only);
DDEATH's are always [].

A payload pysparkplug refuses prints instead
    {"type": "UNDECODABLE", "topic": T, "error": "ValueError: ..."}
e.g. not protobuf, no payload timestamp (NBIRTH, NDATA, DBIRTH, DDATA, NCMD,
DCMD), no seq (NBIRTH, NDATA, DBIRTH, DDATA), a seq on NCMD/DCMD, a birth
metric without a name or datatype, an alias that the birth does not
define, a value with no datatype given nor known from a birth, an INT8 or
INT16 value outside 0..255 or 0..65535 on the wire (pysparkplug wants
negatives as 8/16-bit two's complement, not sign-extended to 32 bits), an
NDEATH with no metric, or a topic whose message type is not Sparkplug's.
A message on spBv1.0/STATE/ID prints {"type": "STATE", "host_id": ID,
"payload": the payload's JSON} (UNDECODABLE if it is not JSON).

Commands come one JSON object a line on stdin (read once it is ready):

    {"cmd": "dcmd", "edge_node": E, "device": D, "metrics": [M, ...]}
        a DCMD on spBv1.0/GROUP_ID/DCMD/E/D, QoS 0, not retained
    {"cmd": "ncmd", "edge_node": E, "metrics": [M, ...]}
        an NCMD on spBv1.0/GROUP_ID/NCMD/E, QoS 0, not retained
    {"cmd": "rebirth", "edge_node": E}
        that NCMD with the BOOLEAN metric "Node Control/Rebirth" = true
    {"cmd": "state", "online": true|false}
        (needs --host-id) the STATE JSON, retained, QoS 1, timestamp now
        unless the command gives "timestamp": ms
    {"cmd": "raw", "topic": T, "payload_hex": H, "qos": 0|1}
        these bytes as they are, QoS 0 if not given, not retained
        ("retain": true to retain)

with M = {"name": N or "alias": n (or both), "datatype": "DOUBLE", "value": V}
(optional "timestamp": ms; a null or missing value sends is_null). Values
are given as they are printed above (DATETIME in ms, BYTES hex, arrays as
lists). The payload timestamp is now in ms and it has no seq; pysparkplug
encodes it, leaving each metric's datatype off the wire as the spec
recommends for commands, unless the dcmd, ncmd or rebirth command says
"include_datatypes": true.
Once the publish has completed (QoS 0: written to the socket; QoS 1:
acknowledged) it prints {"type": "DONE", "cmd": "dcmd"} (the cmd given); a
command it cannot carry out prints {"type": "ERROR", "cmd": the cmd or
null, "error": "..."} instead. Commands are carried out one at a time, in
order. What it publishes under spBv1.0/GROUP_ID/ or on its own STATE topic
comes back on its subscription and prints like any other message, before
or after the DONE: a test picks out the lines it waits for by "type". Its own NCMD/DCMD
decode like anyone's, so without datatypes on the wire their echo is
UNDECODABLE unless the last NBIRTH/DBIRTH it saw defines the metrics.

It exits when stdin closes or on SIGTERM; with --host-id it first publishes
{"online": false, "timestamp": T} (the will's T) retained, as a host going
offline cleanly must. SIGKILL leaves the broker to publish the will.
"""

import argparse
import datetime
import json
import math
import os
import secrets
import signal
import sys
import threading
import time

from paho.mqtt import client as mqtt
from pysparkplug import DataType, DCmd, Message, Metric, NCmd, Topic
from pysparkplug import _protobuf as protobuf  # pysparkplug's Sparkplug B schema
from pysparkplug._payload import Birth

NAMESPACE = "spBv1.0"
PUBLISH_TIMEOUT = 10.0
printing = threading.Lock()


def emit(obj):
    with printing:
        print(json.dumps(obj), flush=True)


def now_ms():
    return int(time.time() * 1000)


def json_value(value):
    if isinstance(value, datetime.datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (tuple, list)):
        return [json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def sparkplug_value(datatype, value):
    """A command's JSON value as pysparkplug wants it for that datatype."""
    if value is None:
        return None
    name = datatype.name
    if name.endswith("_ARRAY"):
        element = DataType[name[: -len("_ARRAY")]]
        return tuple(sparkplug_value(element, v) for v in value)
    if datatype == DataType.DATETIME:
        return datetime.datetime.fromtimestamp(value / 1000, tz=datetime.timezone.utc)
    if datatype in (DataType.BYTES, DataType.FILE):
        return bytes.fromhex(value)
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        return float(value)
    return value


def metric_line(metric, sent):
    return {
        "name": sent.name if sent.HasField("name") else None,
        "resolved_name": metric.name,
        "alias": metric.alias,
        "datatype": metric.datatype.name,
        "value": None if metric.is_null else json_value(metric.value),
        "timestamp": metric.timestamp,
        "is_historical": metric.is_historical,
        "is_null": metric.is_null,
    }


class Host:
    def __init__(self, host, port, group, host_id):
        self.group = group
        self.host_id = host_id
        self.births = {}  # (edge node, device or None) -> pysparkplug Birth
        self.ready = threading.Event()
        self.early = []  # lines received before "ready", printed after it
        self.failed = None
        self.subscribe_mid = None
        self.state_info = None
        self.client = mqtt.Client(
            client_id=f"spbhost-{os.getpid()}-{secrets.token_hex(3)}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_publish = self.on_publish
        self.client.on_message = self.on_message
        self.client.on_disconnect = self.on_disconnect
        self.set_will()
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()

    def state_topic(self):
        return f"{NAMESPACE}/STATE/{self.host_id}"

    def set_will(self):
        self.will_timestamp = now_ms()
        if self.host_id is not None:
            self.client.will_set(
                self.state_topic(),
                json.dumps({"online": False, "timestamp": self.will_timestamp}),
                qos=1,
                retain=True,
            )

    # Network thread.

    def on_connect(self, client, userdata, flags, rc):
        if rc != 0:
            self.fail(f"connection refused: {mqtt.connack_string(rc)}")
            return
        topics = [(f"{NAMESPACE}/{self.group}/#", 1)]
        if self.host_id is not None:
            topics.append((self.state_topic(), 1))
        _, self.subscribe_mid = client.subscribe(topics)

    def on_subscribe(self, client, userdata, mid, granted_qos):
        if mid != self.subscribe_mid:
            return
        if any(q not in (0, 1, 2) for q in granted_qos):
            self.fail(f"subscription refused: {granted_qos}")
            return
        if self.host_id is None:
            self.set_ready()
        else:
            self.state_info = client.publish(
                self.state_topic(),
                json.dumps({"online": True, "timestamp": self.will_timestamp}),
                qos=1,
                retain=True,
            )

    def on_publish(self, client, userdata, mid):
        if self.state_info is not None and mid == self.state_info.mid:
            self.state_info = None
            self.set_ready()

    def on_disconnect(self, client, userdata, rc):
        if rc != 0:
            # paho reconnects by itself: the next session gets a will of its own.
            self.set_will()

    def set_ready(self):
        if not self.ready.is_set():
            with printing:
                print("ready", flush=True)
            for line in self.early:
                emit(line)
            self.early = None
            self.ready.set()

    def fail(self, why):
        self.failed = why
        self.ready.set()

    def on_message(self, client, userdata, msg):
        try:
            line = self.decode(msg)
        except Exception as e:  # whatever pysparkplug raised: report it, go on
            error = f"{type(e).__name__}: {e}"
            if isinstance(e, KeyError):  # pysparkplug's lookup in the birth
                error += " (no such alias or name in the last birth seen)"
            line = {"type": "UNDECODABLE", "topic": msg.topic, "error": error}
        if self.early is not None:  # the network thread, like set_ready
            self.early.append(line)
        else:
            emit(line)

    def decode(self, msg):
        parts = msg.topic.split("/")
        if len(parts) == 3 and parts[1] == "STATE":
            return {
                "type": "STATE",
                "host_id": parts[2],
                "payload": json.loads(msg.payload.decode("utf-8")),
            }
        if len(parts) > 5:
            raise ValueError(f"not a Sparkplug B message topic: {msg.topic}")
        topic = Topic.from_str(msg.topic)
        kind = str(topic.message_type)
        if topic.edge_node_id is None or kind not in (
            "NBIRTH", "NDATA", "NDEATH", "NCMD", "DBIRTH", "DDATA", "DDEATH", "DCMD"
        ):
            raise ValueError(f"not a Sparkplug B message topic: {msg.topic}")
        if kind.startswith("D") and topic.device_id is None:
            raise ValueError(f"{kind} topic without a device: {msg.topic}")
        key = (topic.edge_node_id, topic.device_id)
        message = Message.from_mqtt_message(msg, birth=self.births.get(key))
        payload = message.payload
        if isinstance(payload, Birth):
            if kind == "NBIRTH":
                for k in [k for k in self.births if k[0] == topic.edge_node_id]:
                    del self.births[k]
            self.births[key] = payload
        if kind == "NDEATH":
            metrics = [payload.bd_seq_metric]
        elif kind == "DDEATH":
            metrics = []
        else:
            metrics = list(payload.metrics)
        # The same bytes through the same schema, for what pysparkplug's
        # classes do not keep: which fields were present.
        sent = protobuf.Payload.FromString(msg.payload)
        return {
            "type": kind,
            "group": topic.group_id,
            "edge_node": topic.edge_node_id,
            "device": topic.device_id,
            "timestamp": sent.timestamp if sent.HasField("timestamp") else None,
            "seq": sent.seq if sent.HasField("seq") else None,
            "metrics": [metric_line(m, s) for m, s in zip(metrics, sent.metrics)],
        }

    # Main thread.

    def publish(self, topic, payload, qos, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(timeout=PUBLISH_TIMEOUT)
        if not info.is_published():
            raise RuntimeError(f"publish not completed in {PUBLISH_TIMEOUT} s")

    def command_payload(self, cls, command, metrics):
        built = []
        for m in metrics:
            datatype = DataType[m["datatype"]]
            value = sparkplug_value(datatype, m.get("value"))
            built.append(
                Metric(
                    timestamp=m.get("timestamp"),
                    name=m.get("name"),
                    alias=m.get("alias"),
                    datatype=datatype,
                    value=value,
                    is_null=value is None,
                )
            )
        payload = cls(timestamp=now_ms(), metrics=tuple(built))
        return payload.encode(include_dtypes=bool(command.get("include_datatypes")))

    def run(self, command):
        cmd = command["cmd"]
        if cmd == "dcmd":
            topic = f"{NAMESPACE}/{self.group}/DCMD/{command['edge_node']}/{command['device']}"
            self.publish(topic, self.command_payload(DCmd, command, command["metrics"]), 0)
        elif cmd == "ncmd":
            topic = f"{NAMESPACE}/{self.group}/NCMD/{command['edge_node']}"
            self.publish(topic, self.command_payload(NCmd, command, command["metrics"]), 0)
        elif cmd == "rebirth":
            topic = f"{NAMESPACE}/{self.group}/NCMD/{command['edge_node']}"
            rebirth = [{"name": "Node Control/Rebirth", "datatype": "BOOLEAN", "value": True}]
            self.publish(topic, self.command_payload(NCmd, command, rebirth), 0)
        elif cmd == "state":
            if self.host_id is None:
                raise ValueError("state needs --host-id")
            state = {"online": bool(command["online"]), "timestamp": command.get("timestamp", now_ms())}
            self.publish(self.state_topic(), json.dumps(state), 1, retain=True)
        elif cmd == "raw":
            self.publish(
                command["topic"],
                bytes.fromhex(command["payload_hex"]),
                int(command.get("qos", 0)),
                retain=bool(command.get("retain", False)),
            )
        else:
            raise ValueError(f"unknown cmd {cmd!r}")

    def serve(self):
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = None
            try:
                command = json.loads(line)
                cmd = command.get("cmd")
                self.run(command)
            except Exception as e:
                emit({"type": "ERROR", "cmd": cmd, "error": f"{type(e).__name__}: {e}"})
            else:
                emit({"type": "DONE", "cmd": cmd})

    def close(self):
        if self.host_id is not None and self.ready.is_set() and self.failed is None:
            offline = {"online": False, "timestamp": self.will_timestamp}
            try:
                self.publish(self.state_topic(), json.dumps(offline), 1, retain=True)
            except RuntimeError as e:
                print(f"sparkplug_host: offline STATE not published: {e}", file=sys.stderr)
        self.client.disconnect()
        self.client.loop_stop()


class Stop(Exception):
    pass


def stop(signum, frame):
    raise Stop()


def main():
    parser = argparse.ArgumentParser(description="Sparkplug B host application peer")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("group_id")
    parser.add_argument("--host-id")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, stop)
    host = None
    try:
        try:
            host = Host(args.host, args.port, args.group_id, args.host_id)
        except OSError as e:
            print(f"sparkplug_host: no broker at {args.host}:{args.port}: {e}", file=sys.stderr)
            sys.exit(1)
        host.ready.wait()
        if host.failed is not None:
            print(f"sparkplug_host: {host.failed}", file=sys.stderr)
            sys.exit(1)
        host.serve()
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if host is not None:
            host.close()


main()
