//! The standard `wasi:keyvalue` on the app's own storage: the versions
//! wasmCloud (`0.2.0-draft`) and Spin (`0.2.0-draft2`) components import,
//! each bound from its upstream WIT (`wit/deps/keyvalue-*`).
//!
//! Every call goes through `wasmgate:device/storage`'s own checks (key and
//! value sizes, the key count, the quota, the write rate), so what is
//! refused there is refused here, as `error.other` with the same reason.
//! One bucket exists: the app's storage, opened as `""` or `"default"` (the
//! names wasmCloud and Spin use); any other is `no-such-store`.
//!
//! `increment` keeps its counter as decimal text (as wasmtime's own
//! in-memory store does), so `get` reads it back as a number. Calls reach
//! an app one at a time, so a read-modify-write (`increment`, `swap`) is
//! atomic for it.

use wasmtime::component::{Linker, Resource, ResourceTable};

use super::{MAX_PAGE, StorageCtx, StorageData};
use crate::bindings::GuestError;
use crate::bindings::wasmgate::device::storage::Host as Storage;
use crate::capability::HasCtx;

/// A bucket handle: the app's storage (there is no other).
pub struct Bucket;

/// A compare-and-swap handle (`0.2.0-draft2`): the key and the value it had
/// when the handle was made.
pub struct Cas {
    key: String,
    seen: Option<Vec<u8>>,
}

/// The most bucket and CAS handles an app may hold at once: each is a row
/// in its resource table, and a guest that never drops them must not grow
/// it without end.
pub const MAX_HANDLES: usize = 256;

/// The identifiers that open the app's storage.
const BUCKETS: [&str; 2] = ["", "default"];

mod draft {
    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: trappable },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
    });
}

mod draft2 {
    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}

/// The handles an app holds, in its storage's context.
#[derive(Default)]
pub struct Handles {
    table: ResourceTable,
    held: usize,
}

impl Handles {
    fn push<T: Send + 'static>(&mut self, value: T) -> Result<Resource<T>, String> {
        if self.held >= MAX_HANDLES {
            return Err(format!(
                "limit: the app holds {MAX_HANDLES} keyvalue handles, the most it may; drop some"
            ));
        }
        let handle = self.table.push(value).map_err(|e| e.to_string())?;
        self.held += 1;
        Ok(handle)
    }

    fn remove<T: 'static>(&mut self, handle: Resource<T>) -> wasmtime::Result<T> {
        let value = self.table.delete(handle)?;
        self.held -= 1;
        Ok(value)
    }
}

/// Link both versions for store data that holds the storage's context.
pub fn add_to_linker<T: HasCtx<super::Storage>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    draft::wasi::keyvalue::store::add_to_linker::<T, StorageData>(linker, T::ctx)?;
    draft::wasi::keyvalue::atomics::add_to_linker::<T, StorageData>(linker, T::ctx)?;
    draft::wasi::keyvalue::batch::add_to_linker::<T, StorageData>(linker, T::ctx)?;
    draft2::wasi::keyvalue::store::add_to_linker::<T, StorageData>(linker, T::ctx)?;
    draft2::wasi::keyvalue::atomics::add_to_linker::<T, StorageData>(linker, T::ctx)?;
    draft2::wasi::keyvalue::batch::add_to_linker::<T, StorageData>(linker, T::ctx)
}

/// Storage's refusal, as the reason `error.other` carries: its kind and
/// message (`limit: storage quota of ... bytes would be exceeded`).
fn reason(e: GuestError) -> String {
    match e {
        GuestError::Invalid(m) => format!("invalid: {m}"),
        GuestError::Limit(m) => format!("limit: {m}"),
        GuestError::Unavailable(m) => format!("unavailable: {m}"),
    }
}

/// The calls both versions share, on the app's storage; errors are reasons.
impl StorageCtx {
    fn kv_open(&mut self, identifier: &str) -> Result<Option<Resource<Bucket>>, String> {
        if !BUCKETS.contains(&identifier) {
            return Ok(None);
        }
        self.handles.push(Bucket).map(Some)
    }

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok(Storage::get(self, key)?.map_err(reason))
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(Storage::set(self, key, value)?.map_err(reason))
    }

    fn kv_delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        Ok(Storage::delete(self, key)?.map_err(reason))
    }

    /// `key`'s counter plus `delta`, stored as decimal text.
    fn kv_increment(&mut self, key: String, delta: i128) -> wasmtime::Result<Result<i128, String>> {
        let now = match self.kv_get(key.clone())? {
            Err(e) => return Ok(Err(e)),
            Ok(None) => 0,
            Ok(Some(bytes)) => match std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.trim().parse::<i128>().ok())
            {
                Some(n) => n,
                None => {
                    return Ok(Err(format!(
                        "invalid: the value of {key:?} is not a number to increment"
                    )));
                }
            },
        };
        let Some(next) = now.checked_add(delta) else {
            return Ok(Err(format!(
                "invalid: {key:?} is {now}, and {delta} more is out of range"
            )));
        };
        Ok(self
            .kv_set(key, next.to_string().into_bytes())?
            .map(|()| next))
    }

    /// Each key with its value, or none if it is not there.
    #[allow(clippy::type_complexity)]
    fn kv_get_many(
        &mut self,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, String>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            match self.kv_get(key.clone())? {
                Ok(value) => found.push((key, value)),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(found))
    }

    fn kv_set_many(
        &mut self,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), String>> {
        for (key, value) in pairs {
            if let Err(e) = self.kv_set(key, value)? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    fn kv_delete_many(&mut self, keys: Vec<String>) -> wasmtime::Result<Result<(), String>> {
        for key in keys {
            if let Err(e) = self.kv_delete(key)? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// A page of keys after `after` (from the start if none), and the
    /// cursor of the next page if there may be one.
    fn kv_page(&mut self, after: Option<String>) -> wasmtime::Result<Result<Vec<String>, String>> {
        Ok(
            Storage::keys_page(self, String::new(), after.unwrap_or_default(), MAX_PAGE)?
                .map_err(reason),
        )
    }
}

/// What both versions' `store` share, in each version's own types: `open`,
/// and a bucket's `get`, `set`, `delete`, `exists` and `drop`; the
/// version's `list_keys` (whose cursors differ) is passed in.
macro_rules! shared_host {
    ($($list_keys:tt)*) => {
        type Answer<T> = wasmtime::Result<Result<T, store::Error>>;

        fn other(reason: String) -> store::Error {
            store::Error::Other(reason)
        }

        impl store::Host for StorageCtx {
            fn open(&mut self, identifier: String) -> Answer<Resource<Bucket>> {
                Ok(match self.kv_open(&identifier) {
                    Ok(Some(bucket)) => Ok(bucket),
                    Ok(None) => Err(store::Error::NoSuchStore),
                    Err(e) => Err(other(e)),
                })
            }
        }

        impl store::HostBucket for StorageCtx {
            fn get(&mut self, _: Resource<Bucket>, key: String) -> Answer<Option<Vec<u8>>> {
                Ok(self.kv_get(key)?.map_err(other))
            }

            fn set(&mut self, _: Resource<Bucket>, key: String, value: Vec<u8>) -> Answer<()> {
                Ok(self.kv_set(key, value)?.map_err(other))
            }

            fn delete(&mut self, _: Resource<Bucket>, key: String) -> Answer<()> {
                Ok(self.kv_delete(key)?.map_err(other))
            }

            fn exists(&mut self, _: Resource<Bucket>, key: String) -> Answer<bool> {
                Ok(self.kv_get(key)?.map(|v| v.is_some()).map_err(other))
            }

            $($list_keys)*

            fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
                self.handles.remove(bucket).map(|_| ())
            }
        }
    };
}

mod v_draft {
    //! `0.2.0-draft`: cursors are offsets, increments unsigned.
    use super::draft::wasi::keyvalue::{atomics, batch, store};
    use super::*;

    shared_host! {
        /// The cursor counts the keys already listed.
        fn list_keys(
            &mut self,
            _: Resource<Bucket>,
            cursor: Option<u64>,
        ) -> Answer<store::KeyResponse> {
            let skipped = cursor.unwrap_or(0);
            let keys = match self.keys_at_offset(skipped, MAX_PAGE) {
                Ok(keys) => keys,
                Err(e) => return Ok(Err(other(reason(e)))),
            };
            let cursor = (keys.len() as u32 == MAX_PAGE).then(|| skipped + keys.len() as u64);
            Ok(Ok(store::KeyResponse { keys, cursor }))
        }
    }

    impl atomics::Host for StorageCtx {
        fn increment(&mut self, _: Resource<Bucket>, key: String, delta: u64) -> Answer<u64> {
            Ok(match self.kv_increment(key, i128::from(delta))? {
                Ok(n) => u64::try_from(n).map_err(|_| other(format!("invalid: {n} is out of u64"))),
                Err(e) => Err(other(e)),
            })
        }
    }

    impl batch::Host for StorageCtx {
        /// Present keys only, each with its value.
        fn get_many(
            &mut self,
            _: Resource<Bucket>,
            keys: Vec<String>,
        ) -> Answer<Vec<Option<(String, Vec<u8>)>>> {
            Ok(self
                .kv_get_many(keys)?
                .map(|found| {
                    found
                        .into_iter()
                        .map(|(key, value)| value.map(|v| (key, v)))
                        .collect()
                })
                .map_err(other))
        }

        fn set_many(&mut self, _: Resource<Bucket>, pairs: Vec<(String, Vec<u8>)>) -> Answer<()> {
            Ok(self.kv_set_many(pairs)?.map_err(other))
        }

        fn delete_many(&mut self, _: Resource<Bucket>, keys: Vec<String>) -> Answer<()> {
            Ok(self.kv_delete_many(keys)?.map_err(other))
        }
    }
}

mod v_draft2 {
    //! `0.2.0-draft2` (Spin): cursors are the last key listed, increments
    //! signed, and compare-and-swap handles.
    use super::draft2::wasi::keyvalue::{atomics, batch, store};
    use super::*;

    shared_host! {
        fn list_keys(
            &mut self,
            _: Resource<Bucket>,
            cursor: Option<String>,
        ) -> Answer<store::KeyResponse> {
            Ok(match self.kv_page(cursor)? {
                Ok(keys) => {
                    let cursor = if keys.len() as u32 == MAX_PAGE {
                        keys.last().cloned()
                    } else {
                        None
                    };
                    Ok(store::KeyResponse { keys, cursor })
                }
                Err(e) => Err(other(e)),
            })
        }
    }

    impl atomics::HostCas for StorageCtx {
        fn new(&mut self, _: Resource<Bucket>, key: String) -> Answer<Resource<Cas>> {
            let seen = match self.kv_get(key.clone())? {
                Ok(seen) => seen,
                Err(e) => return Ok(Err(other(e))),
            };
            Ok(self.handles.push(Cas { key, seen }).map_err(other))
        }

        fn current(&mut self, cas: Resource<Cas>) -> Answer<Option<Vec<u8>>> {
            let key = self.handles.table.get(&cas)?.key.clone();
            Ok(self.kv_get(key)?.map_err(other))
        }

        fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
            self.handles.remove(cas).map(|_| ())
        }
    }

    impl atomics::Host for StorageCtx {
        fn increment(&mut self, _: Resource<Bucket>, key: String, delta: i64) -> Answer<i64> {
            Ok(match self.kv_increment(key, i128::from(delta))? {
                Ok(n) => i64::try_from(n).map_err(|_| other(format!("invalid: {n} is out of s64"))),
                Err(e) => Err(other(e)),
            })
        }

        /// Set the value only if it is still what the handle saw; the handle
        /// is used up either way (a failed swap hands back a new one).
        fn swap(
            &mut self,
            cas: Resource<Cas>,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), atomics::CasError>> {
            let Cas { key, seen } = self.handles.remove(cas)?;
            let now = match self.kv_get(key.clone())? {
                Ok(now) => now,
                Err(e) => return Ok(Err(atomics::CasError::StoreError(other(e)))),
            };
            if now != seen {
                return Ok(match self.handles.push(Cas { key, seen: now }) {
                    Ok(fresh) => Err(atomics::CasError::CasFailed(fresh)),
                    Err(e) => Err(atomics::CasError::StoreError(other(e))),
                });
            }
            Ok(self
                .kv_set(key, value)?
                .map_err(|e| atomics::CasError::StoreError(other(e))))
        }
    }

    impl batch::Host for StorageCtx {
        /// Every key asked for, with its value or none.
        fn get_many(
            &mut self,
            _: Resource<Bucket>,
            keys: Vec<String>,
        ) -> Answer<Vec<(String, Option<Vec<u8>>)>> {
            Ok(self.kv_get_many(keys)?.map_err(other))
        }

        fn set_many(&mut self, _: Resource<Bucket>, pairs: Vec<(String, Vec<u8>)>) -> Answer<()> {
            Ok(self.kv_set_many(pairs)?.map_err(other))
        }

        fn delete_many(&mut self, _: Resource<Bucket>, keys: Vec<String>) -> Answer<()> {
            Ok(self.kv_delete_many(keys)?.map_err(other))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(ctx: &mut StorageCtx, key: &str, delta: i128) -> Result<i128, String> {
        ctx.kv_increment(key.into(), delta).expect("call")
    }

    #[test]
    fn increment_counts_in_decimal_text_and_refuses_what_it_cannot_count() {
        let mut ctx = super::super::tests::ctx(1 << 20);
        assert_eq!(numbers(&mut ctx, "n", 5), Ok(5));
        assert_eq!(numbers(&mut ctx, "n", -7), Ok(-2));
        assert_eq!(
            ctx.kv_get("n".into()).expect("call"),
            Ok(Some(b"-2".to_vec()))
        );

        ctx.kv_set("word".into(), b"hello".to_vec())
            .expect("call")
            .expect("set");
        let refused = numbers(&mut ctx, "word", 1).expect_err("not a number");
        assert!(refused.starts_with("invalid: "), "{refused}");

        // At the edge of the range the sum is refused, not wrapped (or a
        // host panic in a debug build), and the value stays as it was.
        let top = i128::MAX.to_string().into_bytes();
        ctx.kv_set("top".into(), top.clone())
            .expect("call")
            .expect("set");
        let refused = numbers(&mut ctx, "top", 1).expect_err("out of range");
        assert!(refused.contains("out of range"), "{refused}");
        assert_eq!(ctx.kv_get("top".into()).expect("call"), Ok(Some(top)));
    }

    #[test]
    fn both_versions_page_through_every_key_once() {
        use super::draft::wasi::keyvalue::store as draft_store;
        use super::draft2::wasi::keyvalue::store as draft2_store;
        let mut ctx = super::super::tests::ctx(1 << 24);
        let count = MAX_PAGE as usize * 2 + 5;
        let keys: Vec<String> = (0..count).map(|i| format!("k{i:05}")).collect();
        ctx.kv_set_many(keys.iter().map(|k| (k.clone(), vec![1])).collect())
            .expect("call")
            .expect("set");

        // 0.2.0-draft: the cursor is how many keys came before.
        let listed = every_key(&mut ctx, |ctx, cursor| {
            let bucket = draft_store::Host::open(ctx, "".into())
                .expect("call")
                .expect("open");
            let page = draft_store::HostBucket::list_keys(ctx, bucket, cursor)
                .expect("call")
                .expect("page");
            (page.keys, page.cursor)
        });
        assert_eq!(listed, keys);

        // 0.2.0-draft2: the cursor is the last key listed.
        let listed = every_key(&mut ctx, |ctx, cursor| {
            let bucket = draft2_store::Host::open(ctx, "default".into())
                .expect("call")
                .expect("open");
            let page = draft2_store::HostBucket::list_keys(ctx, bucket, cursor)
                .expect("call")
                .expect("page");
            (page.keys, page.cursor)
        });
        assert_eq!(listed, keys);
    }

    /// Every key, a page at a time, following `page`'s cursors.
    fn every_key<C>(
        ctx: &mut StorageCtx,
        mut page: impl FnMut(&mut StorageCtx, Option<C>) -> (Vec<String>, Option<C>),
    ) -> Vec<String> {
        let mut listed = Vec::new();
        let mut cursor = None;
        loop {
            let (keys, next) = page(ctx, cursor);
            listed.extend(keys);
            match next {
                Some(next) => cursor = Some(next),
                None => return listed,
            }
        }
    }

    #[test]
    fn a_guest_cannot_hold_more_handles_than_the_cap() {
        use super::draft2::wasi::keyvalue::store;
        let mut ctx = super::super::tests::ctx(1 << 20);
        for _ in 0..MAX_HANDLES {
            store::Host::open(&mut ctx, "".into())
                .expect("call")
                .expect("open");
        }
        let refused = store::Host::open(&mut ctx, "".into()).expect("call");
        assert!(
            matches!(&refused, Err(store::Error::Other(m)) if m.starts_with("limit: ")),
            "{refused:?}"
        );
        assert!(matches!(
            store::Host::open(&mut ctx, "elsewhere".into()).expect("call"),
            Err(store::Error::NoSuchStore)
        ));
    }
}
