import Testing

@testable import PortcullisServer

@Suite struct SettledFileChangeTests {
    /// The read decisions for a sequence of polls, each the file's identity then (`force`: SIGHUP).
    private func reads(from current: Int?, _ polls: [(Int?, force: Bool)]) -> ([Bool], Int?) {
        var settling = SettledFileChange(current: current)
        let decisions = polls.map { settling.poll($0.0, force: $0.force) }
        return (decisions, settling.current)
    }

    @Test func aChangeIsReadOnceItLooksTheSameAtTwoPollsInARow() {
        let (decisions, current) = reads(from: 1, [(1, false), (2, false), (2, false), (2, false)])
        #expect(decisions == [false, false, true, false])
        #expect(current == 2)
    }

    /// An editor truncating, then writing in pieces: no intermediate state is ever read.
    @Test func aFileStillBeingWrittenIsNotRead() {
        let (decisions, current) = reads(from: 1, [(0, false), (3, false), (5, false), (5, false)])
        #expect(decisions == [false, false, false, true])
        #expect(current == 5)
    }

    @Test func aChangeBackToTheVersionInForceIsNoChange() {
        let (decisions, _) = reads(from: 1, [(2, false), (1, false), (2, false), (2, false)])
        #expect(decisions == [false, false, false, true])
    }

    @Test func forceReadsAtOnce() {
        let (decisions, current) = reads(from: 1, [(2, false), (3, true), (3, true), (3, false)])
        #expect(decisions == [false, true, true, false])
        #expect(current == 3)
    }

    @Test func aFileThatDisappearsIsReadOnceThatSettlesToo() {
        let (decisions, current) = reads(from: 1, [(nil, false), (nil, false)])
        #expect(decisions == [false, true])
        #expect(current == nil)
    }
}
