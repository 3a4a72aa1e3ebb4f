//! An async echo server on a TI-flow that survives its connection's loss.
//!
//! Two stacks joined by an in-memory pipe (no root, no TUN), each driven by
//! its runtime's thread; the application side is tokio tasks on one
//! thread. The client writes 4 MiB in chunks, abandons its TCP connection
//! (`fail_transport`, as if a middlebox had killed it) after every other
//! chunk, and checks that the echo comes back byte for byte.
//!
//! Run: `cargo run -p ti-stack --features tokio --example async_echo`

use std::net::{Ipv4Addr, SocketAddrV4};

use ti_stack::device::pipe::Pipe;
use ti_stack::{Mode, Runtime, StackConfig, StreamEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const PORT: u16 = 7;
const TOTAL: usize = 4 << 20;
const CHUNK: usize = 256 << 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client_dev, server_dev) = Pipe::pair(1500);
    let client = Runtime::start(StackConfig::new(Ipv4Addr::new(10, 9, 0, 1)), client_dev)?;
    let server = Runtime::start(StackConfig::new(SERVER), server_dev)?;
    let tasks = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (echoed, resumes) = tasks.block_on(async {
        let listener = server.listen(PORT)?;
        let echo = tokio::spawn(async move {
            let mut stream = listener.accept_async().await?;
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0usize;
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await?;
                total += n;
            }
            AsyncWriteExt::shutdown(&mut stream).await?;
            Ok::<usize, std::io::Error>(total)
        });
        let mut stream = client
            .connect_async(SocketAddrV4::new(SERVER, PORT))
            .await?;
        if !matches!(stream.mode(), Mode::Resilient { .. }) {
            return Err("the connection did not become a TI-flow".into());
        }
        let data: Vec<u8> = (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect();
        let mut reader = stream.try_clone();
        let read_back = tokio::spawn(async move {
            let mut back = Vec::with_capacity(TOTAL);
            reader.read_to_end(&mut back).await.map(|_| back)
        });
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            stream.write_all(chunk).await?;
            if i % 2 == 1 {
                stream.fail_transport()?;
            }
        }
        AsyncWriteExt::shutdown(&mut stream).await?;
        let back = read_back.await??;
        let served = echo.await??;
        if back != data || served != TOTAL {
            return Err(format!(
                "echo differs: sent {TOTAL} bytes, server echoed {served}, got {} back",
                back.len()
            )
            .into());
        }
        let resumes = stream
            .events()
            .iter()
            .filter(|e| matches!(e, StreamEvent::Resumed { .. }))
            .count();
        Ok::<_, Box<dyn std::error::Error>>((back.len(), resumes))
    })?;
    println!("echoed {echoed} bytes byte-exact across {resumes} resumes");
    if resumes == 0 {
        return Err("no resume happened".into());
    }
    Ok(())
}
