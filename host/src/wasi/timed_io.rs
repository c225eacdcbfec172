//! `wasi:io` poll and streams, with the waits timed on the instance's
//! [`IoClock`].
//!
//! A guest waiting on a granted socket or an HTTP answer waits in
//! `wasi:io/poll` or in a blocking stream call, not in a device unit. Timed
//! here, those waits do not count against the call's deadline any more than
//! a Modbus wait does: the epoch check moves the deadline by what the clock
//! says was waited, and the call's wall time stays bounded by its deadline,
//! the grace and the app's `io_wait_ms` (past that, the actor cuts it off as
//! stuck in a host call). An app granted no I/O has a budget of zero, and
//! its waits count against its deadline as before.
//!
//! Everything else is wasmtime-wasi-io's own implementation on the resource
//! table, called as it is.

use wasmtime::Result;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamResult};

use crate::io_clock::IoClock;

/// The resource table, and the clock its waits are timed on.
pub struct TimedIo<'a> {
    pub table: &'a mut ResourceTable,
    pub io: &'a IoClock,
}

impl poll::Host for TimedIo<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> Result<Vec<u32>> {
        self.io
            .time(<ResourceTable as poll::Host>::poll(self.table, pollables))
            .await
    }
}

impl poll::HostPollable for TimedIo<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        self.io
            .time(<ResourceTable as poll::HostPollable>::block(
                self.table, pollable,
            ))
            .await
    }

    async fn ready(&mut self, pollable: Resource<DynPollable>) -> Result<bool> {
        <ResourceTable as poll::HostPollable>::ready(self.table, pollable).await
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        <ResourceTable as poll::HostPollable>::drop(self.table, pollable)
    }
}

impl streams::Host for TimedIo<'_> {
    fn convert_stream_error(
        &mut self,
        err: wasmtime_wasi::p2::StreamError,
    ) -> Result<streams::StreamError> {
        <ResourceTable as streams::Host>::convert_stream_error(self.table, err)
    }
}

impl streams::HostInputStream for TimedIo<'_> {
    async fn drop(&mut self, stream: Resource<DynInputStream>) -> Result<()> {
        <ResourceTable as streams::HostInputStream>::drop(self.table, stream).await
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        <ResourceTable as streams::HostInputStream>::read(self.table, stream, len)
    }

    async fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        let read =
            <ResourceTable as streams::HostInputStream>::blocking_read(self.table, stream, len);
        self.io.time(read).await
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        <ResourceTable as streams::HostInputStream>::skip(self.table, stream, len)
    }

    async fn blocking_skip(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let skip =
            <ResourceTable as streams::HostInputStream>::blocking_skip(self.table, stream, len);
        self.io.time(skip).await
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> Result<Resource<DynPollable>> {
        <ResourceTable as streams::HostInputStream>::subscribe(self.table, stream)
    }
}

impl streams::HostOutputStream for TimedIo<'_> {
    async fn drop(&mut self, stream: Resource<DynOutputStream>) -> Result<()> {
        <ResourceTable as streams::HostOutputStream>::drop(self.table, stream).await
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        <ResourceTable as streams::HostOutputStream>::check_write(self.table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::write(self.table, stream, bytes)
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> Result<Resource<DynPollable>> {
        <ResourceTable as streams::HostOutputStream>::subscribe(self.table, stream)
    }

    async fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let write = <ResourceTable as streams::HostOutputStream>::blocking_write_and_flush(
            self.table, stream, bytes,
        );
        self.io.time(write).await
    }

    async fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        let write = <ResourceTable as streams::HostOutputStream>::blocking_write_zeroes_and_flush(
            self.table, stream, len,
        );
        self.io.time(write).await
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::write_zeroes(self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::flush(self.table, stream)
    }

    async fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        let flush =
            <ResourceTable as streams::HostOutputStream>::blocking_flush(self.table, stream);
        self.io.time(flush).await
    }

    fn splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        <ResourceTable as streams::HostOutputStream>::splice(self.table, dest, src, len)
    }

    async fn blocking_splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let splice = <ResourceTable as streams::HostOutputStream>::blocking_splice(
            self.table, dest, src, len,
        );
        self.io.time(splice).await
    }
}
