// A test app in JavaScript that uses WASI's standard interfaces, bound by
// componentize-js from their upstream WIT (wit/deps) through the
// `standard-app` world: the same checks as the Rust test guest
// guests/rust/test-guests/standard-interfaces.
//
// At init it reads its config through wasi:config/store (Spin's version)
// and logs through wasi:logging whether it agrees with what init was given.

import { log } from 'wasi:logging/logging@0.1.0-draft';
import { get, getAll } from 'wasi:config/store@0.2.0-draft-2024-09-27';

export function init(pairs, _previous) {
  const given = new Map(pairs);
  const all = getAll();
  const same = all.length === given.size && all.every(([k, v]) => given.get(k) === v);
  const unit = get('unit') ?? '-';
  const absent = get('no-such-key') === undefined;
  log('info', 'standard', `config unit=${unit} keys=${all.length} same-as-init=${same} absent=${absent}`);
  log('critical', 'standard', 'a critical line');
}

export function save() {
  return undefined;
}

export function onTick(_now) {}

export function onDesired(_device, _changes) {}

export function onAction(_device, name, _argument) {
  throw `this app has no action ${name}`;
}
