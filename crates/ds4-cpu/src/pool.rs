//! Work splitting over a fixed number of threads.

/// Splits `0..n` into at most `threads` contiguous ranges of at least
/// `min_per_thread` items, runs `f` on each (the caller's thread takes the
/// first) and returns the results in range order.
pub fn map_ranges<T, F>(
    threads: usize,
    n: usize,
    min_per_thread: usize,
    f: F,
) -> Vec<(usize, usize, T)>
where
    T: Send,
    F: Fn(usize, usize) -> T + Sync,
{
    let parts = threads.min(n / min_per_thread.max(1)).max(1);
    if parts == 1 {
        return vec![(0, n, f(0, n))];
    }
    let per = n.div_ceil(parts);
    let bounds: Vec<(usize, usize)> = (0..parts)
        .map(|p| (p * per, ((p + 1) * per).min(n)))
        .filter(|(a, b)| a < b)
        .collect();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = bounds[1..]
            .iter()
            .map(|&(a, b)| s.spawn(move || (a, b, f(a, b))))
            .collect();
        let (a0, b0) = bounds[0];
        let mut out = vec![(a0, b0, f(a0, b0))];
        out.extend(
            handles
                .into_iter()
                .map(|h| h.join().expect("worker thread panicked")),
        );
        out
    })
}
