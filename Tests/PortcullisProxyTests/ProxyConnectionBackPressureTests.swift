import Testing

@testable import PortcullisProxy

/// Back-pressure while a request or response body is relayed: the side that cannot take more
/// holds the other side's reads, and letting go resumes them (``ConnectionHarness`` records
/// whether a read request reached each socket).
@Suite struct ProxyConnectionBackPressureTests {
    @Test func aClientThatCannotTakeMoreHoldsTheOriginsReadsMidBodyUntilItCan() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        try origin.send("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
        #expect(origin.readRequested)
        h.setClientWritable(false)
        try origin.send("cd")
        // What was read still goes out; no more is read.
        #expect(h.outputText.hasSuffix("\r\n\r\nabcd"))
        #expect(!origin.readRequested)
        h.setClientWritable(true)
        #expect(origin.readRequested)
        try origin.send("ef")
        #expect(h.outputText == "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nVia: 1.1 portcullis\r\n\r\nabcdef")
        #expect(origin.readRequested)
        h.finish()
    }

    @Test func anOriginThatCannotTakeMoreHoldsTheClientsReadsMidBodyUntilItCan() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 9\r\n\r\nabc")
        let origin = try h.acceptConnect()
        #expect(origin.takeReceived().hasSuffix("Via: 1.1 portcullis\r\n\r\nabc"))
        #expect(h.clientReadRequested)
        origin.setWritable(false)
        try h.send("def")
        // Kept in the proxy until the origin can take it; no more is read from the client.
        #expect(origin.receivedText.isEmpty)
        #expect(!h.clientReadRequested)
        origin.setWritable(true)
        #expect(origin.takeReceived() == "def")
        #expect(h.clientReadRequested)
        try h.send("ghi")
        #expect(origin.takeReceived() == "ghi")
        try origin.send(Wire.ok)
        #expect(h.outputText == Wire.okRelayed)
        h.finish()
    }

    @Test func writabilityTogglingBackAndForthLosesAndReordersNothing() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        let origin = try h.acceptConnect()
        _ = origin.takeReceived()
        try origin.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        var sent = ""
        var relayed = ""
        for i in 0..<6 {
            origin.setWritable(i % 2 == 0)
            h.setClientWritable(i % 3 != 0)
            try h.send("1\r\n\(i)\r\n")
            try origin.send("1\r\n\(i)\r\n")
            sent += "1\r\n\(i)\r\n"
            relayed += "1\r\n\(i)\r\n"
        }
        origin.setWritable(true)
        h.setClientWritable(true)
        try h.send("0\r\n\r\n")
        try origin.send("0\r\n\r\n")
        #expect(origin.receivedText == sent + "0\r\n\r\n")
        #expect(
            h.outputText
                == "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: 1.1 portcullis\r\n\r\n" + relayed
                + "0\r\n\r\n"
        )
        #expect(h.isOpen && origin.isOpen)
        h.finish()
    }
}
