//! FUSE operations as the Linux client sends them, on top of [`Guest::call`].

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, ForgetIn, GetxattrIn, InHeader, InitIn, InitOut, LinkIn, MkdirIn,
    Opcode, OpenIn, OpenOut, ReadIn, ReleaseIn, RenameIn, SetattrIn, SetxattrIn, WriteIn, WriteOut,
    KERNEL_MINOR_VERSION, KERNEL_VERSION,
};
use fuse_backend_rs::api::filesystem::FsOptions;
use vm_memory::ByteValued;

use super::guest::{cstr, read_obj, Guest, Seg, Used, Q};

/// What our INIT offers: the usual Linux set, plus writeback caching and
/// zero-message open, which the device must turn down.
pub(super) fn offered_init_flags() -> FsOptions {
    FsOptions::ASYNC_READ
        | FsOptions::BIG_WRITES
        | FsOptions::MAX_PAGES
        | FsOptions::DO_READDIRPLUS
        | FsOptions::WRITEBACK_CACHE
        | FsOptions::ZERO_MESSAGE_OPEN
}

impl Guest {
    pub(super) fn init(&mut self) -> InitOut {
        let init = InitIn {
            major: KERNEL_VERSION,
            minor: KERNEL_MINOR_VERSION,
            max_readahead: 128 * 1024,
            flags: offered_init_flags().bits() as u32,
        };
        self.call(
            Opcode::Init,
            0,
            &[init.as_slice()],
            size_of::<InitOut>() as u32,
        )
        .ok()
    }

    pub(super) fn lookup(&mut self, parent: u64, name: &str) -> Used {
        let name = cstr(name);
        self.call(
            Opcode::Lookup,
            parent,
            &[&name],
            size_of::<EntryOut>() as u32,
        )
    }

    pub(super) fn entry(&mut self, parent: u64, name: &str) -> EntryOut {
        self.lookup(parent, name).ok()
    }

    pub(super) fn open(&mut self, nodeid: u64, flags: i32) -> u64 {
        let open = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let out: OpenOut = self
            .call(
                Opcode::Open,
                nodeid,
                &[open.as_slice()],
                size_of::<OpenOut>() as u32,
            )
            .ok();
        out.fh
    }

    pub(super) fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Used {
        let read = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(Opcode::Read, nodeid, &[read.as_slice()], size)
    }

    pub(super) fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> u32 {
        let write = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let out: WriteOut = self
            .call(
                Opcode::Write,
                nodeid,
                &[write.as_slice(), data],
                size_of::<WriteOut>() as u32,
            )
            .ok();
        out.size
    }

    pub(super) fn release(&mut self, nodeid: u64, fh: u64) {
        let release = ReleaseIn {
            fh,
            ..Default::default()
        };
        let used = self.call(Opcode::Release, nodeid, &[release.as_slice()], 0);
        assert_eq!(used.errno(), 0);
    }

    pub(super) fn create(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
    ) -> (EntryOut, OpenOut) {
        let create = CreateIn {
            flags: flags as u32,
            mode,
            umask: 0o022,
            fuse_flags: 0,
        };
        let name = cstr(name);
        let used = self.call(
            Opcode::Create,
            parent,
            &[create.as_slice(), &name],
            (size_of::<EntryOut>() + size_of::<OpenOut>()) as u32,
        );
        let entry: EntryOut = used.ok();
        let open = read_obj(&used.payload()[size_of::<EntryOut>()..], 0);
        (entry, open)
    }

    pub(super) fn mkdir(&mut self, parent: u64, name: &str, mode: u32) -> EntryOut {
        let mkdir = MkdirIn { mode, umask: 0 };
        let name = cstr(name);
        self.call(
            Opcode::Mkdir,
            parent,
            &[mkdir.as_slice(), &name],
            size_of::<EntryOut>() as u32,
        )
        .ok()
    }

    pub(super) fn symlink(&mut self, parent: u64, name: &str, target: &str) -> EntryOut {
        let (name, target) = (cstr(name), cstr(target));
        self.call(
            Opcode::Symlink,
            parent,
            &[&name, &target],
            size_of::<EntryOut>() as u32,
        )
        .ok()
    }

    pub(super) fn readlink(&mut self, nodeid: u64) -> Vec<u8> {
        let used = self.call(Opcode::Readlink, nodeid, &[], 4096);
        assert_eq!(used.errno(), 0);
        used.payload().to_vec()
    }

    pub(super) fn link(&mut self, nodeid: u64, new_parent: u64, name: &str) -> EntryOut {
        let link = LinkIn { oldnodeid: nodeid };
        let name = cstr(name);
        self.call(
            Opcode::Link,
            new_parent,
            &[link.as_slice(), &name],
            size_of::<EntryOut>() as u32,
        )
        .ok()
    }

    pub(super) fn rename(&mut self, parent: u64, name: &str, new_parent: u64, new: &str) -> Used {
        let rename = RenameIn { newdir: new_parent };
        let (name, new) = (cstr(name), cstr(new));
        self.call(Opcode::Rename, parent, &[rename.as_slice(), &name, &new], 0)
    }

    pub(super) fn unlink(&mut self, parent: u64, name: &str) -> Used {
        let name = cstr(name);
        self.call(Opcode::Unlink, parent, &[&name], 0)
    }

    pub(super) fn setattr(&mut self, nodeid: u64, setattr: SetattrIn) -> AttrOut {
        self.call(
            Opcode::Setattr,
            nodeid,
            &[setattr.as_slice()],
            size_of::<AttrOut>() as u32,
        )
        .ok()
    }

    pub(super) fn setxattr(&mut self, nodeid: u64, name: &str, value: &[u8]) -> Used {
        let setxattr = SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        let name = cstr(name);
        self.call(
            Opcode::Setxattr,
            nodeid,
            &[setxattr.as_slice(), &name, value],
            0,
        )
    }

    pub(super) fn getxattr(&mut self, nodeid: u64, name: &str, size: u32) -> Used {
        let getxattr = GetxattrIn { size, padding: 0 };
        let name = cstr(name);
        self.call(
            Opcode::Getxattr,
            nodeid,
            &[getxattr.as_slice(), &name],
            size,
        )
    }

    /// FORGET goes to the high-priority queue and has no reply buffer.
    pub(super) fn forget(&mut self, nodeid: u64, nlookup: u64) -> Used {
        let forget = ForgetIn { nlookup };
        let header: InHeader = self.header(Opcode::Forget, nodeid, size_of::<ForgetIn>());
        self.send(
            Q::Hiprio,
            &[Seg::In(header.as_slice()), Seg::In(forget.as_slice())],
        )
    }
}
