//! The backend layer's one error type.
//!
//! Its cases follow the exceptions of librbd's Python binding (and so the WIT `error`
//! variant), because that is the contract both backends must meet: the librbd backend maps
//! an errno here exactly as python-rbd's `make_ex` does, and the embedded backend answers the
//! same case for the same mistake.

/// Why a backend operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `ImageNotFound` (ENOENT).
    #[error("not found: {0}")]
    NotFound(String),
    /// `ImageExists` (EEXIST).
    #[error("already exists: {0}")]
    Exists(String),
    /// `ImageBusy` (EBUSY).
    #[error("busy: {0}")]
    Busy(String),
    /// `ImageHasSnapshots` (ENOTEMPTY).
    #[error("image has snapshots: {0}")]
    HasSnapshots(String),
    /// `ReadOnlyImage` (EROFS).
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// `InvalidArgument` (EINVAL).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `ArgumentOutOfRange` (EDOM).
    #[error("argument out of range: {0}")]
    OutOfRange(String),
    /// `FunctionNotSupported` (ENOSYS) / `OperationNotSupported` (EOPNOTSUPP).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// `PermissionError` (EPERM, EACCES).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// `IOError` (EIO).
    #[error("I/O error: {0}")]
    Io(String),
    /// `IncompleteWriteError`: the write ran past the end of the image.
    #[error("incomplete write: wrote {written} of {requested} bytes")]
    IncompleteWrite { requested: u64, written: u64 },
    /// `LogicError`.
    #[error("logic error: {0}")]
    Logic(String),
    /// `TypeError`: an argument that cannot cross into librbd (a NUL in a name).
    #[error("type error: {0}")]
    TypeError(String),
    /// `NoSpace` (ENOSPC).
    #[error("no space left: {0}")]
    NoSpace(String),
    /// `DiskQuotaExceeded` (EDQUOT), or a job quota.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// `Timeout` (ETIMEDOUT).
    #[error("timed out: {0}")]
    Timeout(String),
    /// `ConnectionShutdown` (ESHUTDOWN).
    #[error("connection shut down: {0}")]
    ConnectionShutdown(String),
    /// `Error`: any other errno (positive).
    #[error("error {errno}: {message}")]
    Other { errno: i32, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// errno values on Linux; python-rbd's `errno_to_exception` table is keyed by these.
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EIO: i32 = 5;
const EACCES: i32 = 13;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const EROFS: i32 = 30;
const EDOM: i32 = 33;
const ENOSYS: i32 = 38;
const ENOTEMPTY: i32 = 39;
const EOPNOTSUPP: i32 = 95;
const ESHUTDOWN: i32 = 108;
const ETIMEDOUT: i32 = 110;
const EDQUOT: i32 = 122;

/// ECANCELED, what librbd answers when a progress callback stops an operation.
pub const ECANCELED: i32 = 125;

impl Error {
    /// An operation stopped because its caller asked it to (a progress callback said no).
    pub fn cancelled(what: &str) -> Error {
        Error::Other { errno: ECANCELED, message: format!("{what}: cancelled") }
    }

    /// The error for a (positive or negative) errno, as python-rbd's `make_ex` maps it.
    pub fn from_errno(errno: i32, context: impl Into<String>) -> Self {
        let m = context.into();
        match errno.abs() {
            EPERM | EACCES => Error::PermissionDenied(m),
            ENOENT => Error::NotFound(m),
            EIO => Error::Io(m),
            ENOSPC => Error::NoSpace(m),
            EEXIST => Error::Exists(m),
            EINVAL => Error::InvalidArgument(m),
            EROFS => Error::ReadOnly(m),
            EBUSY => Error::Busy(m),
            ENOTEMPTY => Error::HasSnapshots(m),
            ENOSYS | EOPNOTSUPP => Error::NotSupported(m),
            EDOM => Error::OutOfRange(m),
            ESHUTDOWN => Error::ConnectionShutdown(m),
            ETIMEDOUT => Error::Timeout(m),
            EDQUOT => Error::QuotaExceeded(m),
            e => Error::Other { errno: e, message: m },
        }
    }

    /// The short name of the case, as tests and the audit log print it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not-found",
            Error::Exists(_) => "exists",
            Error::Busy(_) => "busy",
            Error::HasSnapshots(_) => "has-snapshots",
            Error::ReadOnly(_) => "read-only",
            Error::InvalidArgument(_) => "invalid-argument",
            Error::OutOfRange(_) => "out-of-range",
            Error::NotSupported(_) => "not-supported",
            Error::PermissionDenied(_) => "permission-denied",
            Error::Io(_) => "io",
            Error::IncompleteWrite { .. } => "incomplete-write",
            Error::Logic(_) => "logic",
            Error::TypeError(_) => "type-error",
            Error::NoSpace(_) => "no-space",
            Error::QuotaExceeded(_) => "quota-exceeded",
            Error::Timeout(_) => "timeout",
            Error::ConnectionShutdown(_) => "connection-shutdown",
            Error::Other { .. } => "other",
        }
    }
}

impl From<std::io::Error> for Error {
    /// A local filesystem error of the embedded store.
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(ENOSPC) => Error::NoSpace(e.to_string()),
            Some(EDQUOT) => Error::QuotaExceeded(e.to_string()),
            _ => Error::Io(e.to_string()),
        }
    }
}
