//! Replay harness for captured traces (work in progress).
