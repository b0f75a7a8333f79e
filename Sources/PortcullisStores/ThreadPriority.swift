#if canImport(Glibc)
    import Glibc
#endif

/// Password checks run below the event loops' priority.
///
/// bcrypt (tens of milliseconds per check) runs on the blocking pool; during a storm of new
/// logins it takes every core, and authenticated traffic on the event loops would queue behind
/// it. Linux's nice value is per thread: a pool thread about to hash lowers its own (nice +10,
/// once; unprivileged, and it never needs raising again). The pool still gets all idle CPU and
/// only yields when an event loop wants the same core.
public enum ThreadPriority {
    /// How much lower than the process the password-checking threads run.
    public static let backgroundIncrement: Int32 = 10

    /// Lowers the calling thread's priority to the background level, if not already there.
    public static func enterBackground() {
        #if os(Linux)
            // `who` 0 is the calling task, i.e. this thread (not the whole process).
            let which = __priority_which_t(PRIO_PROCESS.rawValue)
            errno = 0
            let current = getpriority(which, 0)
            guard errno == 0, current < Self.backgroundLevel else { return }
            _ = setpriority(which, 0, Self.backgroundLevel)
        #endif
    }

    /// The nice value background threads run at: the process's (read once) plus the increment.
    private static let backgroundLevel: Int32 = {
        #if os(Linux)
            // The main thread's nice value: the process's own, whatever thread asks first.
            let which = __priority_which_t(PRIO_PROCESS.rawValue)
            let process = getpriority(which, UInt32(getpid()))
            return min(19, process + Self.backgroundIncrement)
        #else
            return 0
        #endif
    }()
}
