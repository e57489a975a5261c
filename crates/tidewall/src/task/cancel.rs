//! Cancellation tokens that carry a reason, with children, drop guards and cancel-checked
//! futures.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::wakers::WakerSlots;

/// Why something was cancelled: a cheap-to-clone message every child can read.
///
/// ```
/// use tidewall::task::Reason;
///
/// let reason = Reason::new("shutdown: SIGTERM");
/// assert_eq!(reason.as_str(), "shutdown: SIGTERM");
/// assert_eq!(reason.clone(), reason);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reason(Arc<str>);

impl Reason {
    /// A reason with this message.
    pub fn new(message: impl Into<Arc<str>>) -> Self {
        Self(message.into())
    }

    /// The message.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reason({:?})", &*self.0)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

/// A cancellation token: cancel it once, with a [`Reason`]; everything waiting on it, and
/// every child token, sees the cancellation and the same reason.
///
/// * [`child`](Self::child) tokens are cancelled with their parent (with the parent's
///   reason); cancelling a child leaves the parent alone.
/// * [`cancelled`](Self::cancelled) waits for it; [`run_until_cancelled`](Self::run_until_cancelled)
///   races any future against it, checking the token *before every poll* of that future, so
///   even a future that is always ready stops at the next poll once cancelled.
/// * [`drop_guard`](Self::drop_guard) cancels it when the guard goes out of scope.
///
/// The first cancellation wins: later `cancel` calls do not replace the reason. Memory: a
/// child holds its parent; a parent holds its children weakly and forgets dropped ones when
/// it is cancelled or when its list of children would otherwise grow, so the list stays
/// within about twice the most children alive at once. Depth does not matter: cancelling a
/// token and dropping the last token of a chain walk it iteratively, so a chain of a million
/// nested children needs no more stack than one child.
///
/// ```
/// use tidewall::task::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let root = CancellationToken::new();
/// let worker = root.child();
/// let job = tokio::spawn({
///     let worker = worker.clone();
///     async move { worker.run_until_cancelled(std::future::pending::<()>()).await }
/// });
/// root.cancel("deploy: draining");
/// let reason = job.await.unwrap().unwrap_err();
/// assert_eq!(reason.as_str(), "deploy: draining");
/// assert_eq!(worker.reason().unwrap(), reason);
/// # }
/// ```
#[derive(Clone)]
pub struct CancellationToken {
    node: Arc<Node>,
}

struct Node {
    cancelled: AtomicBool,
    parent: Option<Arc<Node>>,
    state: Mutex<NodeState>,
}

#[derive(Default)]
struct NodeState {
    reason: Option<Reason>,
    children: Vec<Weak<Node>>,
    waiters: WakerSlots,
}

impl Node {
    fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cancels this node and its subtree, depth first, iteratively: the subtree may be any
    /// depth. Wakers are woken and children cancelled outside every lock.
    fn cancel(&self, reason: &Reason) {
        let mut pending = Vec::new();
        self.cancel_alone(reason, &mut pending);
        while let Some(child) = pending.pop() {
            // A child dropped meanwhile has nothing left to cancel.
            if let Some(child) = child.upgrade() {
                child.cancel_alone(reason, &mut pending);
            }
        }
    }

    /// Cancels this node only, wakes its waiters and hands its children to `pending`. A node
    /// already cancelled stops here: its subtree was handed on when it was cancelled.
    fn cancel_alone(&self, reason: &Reason, pending: &mut Vec<Weak<Node>>) {
        let (wakers, children) = {
            let mut state = self.state();
            if state.reason.is_some() {
                return;
            }
            state.reason = Some(reason.clone());
            self.cancelled.store(true, Ordering::Release);
            (
                state.waiters.take_all(),
                std::mem::take(&mut state.children),
            )
        };
        for waker in wakers {
            waker.wake();
        }
        // Reversed onto the stack, so the first child is cancelled (with its subtree) first.
        pending.extend(children.into_iter().rev());
    }
}

impl Drop for Node {
    /// Releases the chain of ancestors one at a time: the default drop would recurse once
    /// per ancestor this node held the last reference to.
    fn drop(&mut self) {
        let mut parent = self.parent.take();
        while let Some(node) = parent {
            // `None` when another reference keeps the parent alive; the walk ends there.
            parent = Arc::into_inner(node).and_then(|mut node| node.parent.take());
        }
    }
}

impl Default for CancellationToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CancellationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancellationToken")
            .field("reason", &self.reason())
            .finish()
    }
}

impl CancellationToken {
    /// A fresh, uncancelled root token.
    pub fn new() -> Self {
        Self {
            node: Arc::new(Node {
                cancelled: AtomicBool::new(false),
                parent: None,
                state: Mutex::default(),
            }),
        }
    }

    /// A child: cancelled when this token is (with its reason), cancellable on its own.
    pub fn child(&self) -> Self {
        let node = Arc::new(Node {
            cancelled: AtomicBool::new(false),
            parent: Some(Arc::clone(&self.node)),
            state: Mutex::default(),
        });
        let inherited = {
            let mut state = self.node.state();
            match &state.reason {
                Some(reason) => Some(reason.clone()),
                None => {
                    // Forget children dropped since, but only when the list would grow, and
                    // leave room for as many again as are alive: the next sweep is at least
                    // that many children away, so each costs O(1) amortized however many
                    // stay alive, and the list stays within twice the live children.
                    let children = &mut state.children;
                    if children.len() == children.capacity() {
                        children.retain(|c| c.strong_count() > 0);
                        children.reserve_exact(children.len().max(4));
                    }
                    state.children.push(Arc::downgrade(&node));
                    None
                }
            }
        };
        if let Some(reason) = inherited {
            node.cancel(&reason);
        }
        Self { node }
    }

    /// Cancels this token and its children with `reason` (the first reason wins).
    pub fn cancel(&self, reason: impl Into<Reason>) {
        self.node.cancel(&reason.into());
    }

    /// Whether it has been cancelled (one atomic load).
    pub fn is_cancelled(&self) -> bool {
        self.node.cancelled.load(Ordering::Acquire)
    }

    /// Why it was cancelled, once it was.
    pub fn reason(&self) -> Option<Reason> {
        if !self.is_cancelled() {
            return None;
        }
        self.node.state().reason.clone()
    }

    /// Whether this token has a parent (it was made with [`child`](Self::child)).
    pub fn has_parent(&self) -> bool {
        self.node.parent.is_some()
    }

    /// Completes with the reason once the token is cancelled.
    ///
    /// **Cancel safety:** dropping the future unregisters it; nothing else happens.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled {
            waiter: Waiter {
                token: self,
                slot: None,
            },
        }
    }

    /// As [`cancelled`](Self::cancelled), holding a clone of the token: a `'static` future
    /// to store in a struct or move into a task.
    ///
    /// **Cancel safety:** dropping the future unregisters it; nothing else happens.
    pub fn cancelled_owned(&self) -> CancelledOwned {
        CancelledOwned {
            waiter: Waiter {
                token: self.clone(),
                slot: None,
            },
        }
    }

    /// Runs `future` until it completes or the token is cancelled, whichever comes first.
    /// The token is checked before every poll of `future`, so it stops even a future that is
    /// always ready; it is never polled again after the cancellation is seen.
    ///
    /// **Cancel safety:** as `future`'s; dropping this drops `future`.
    pub fn run_until_cancelled<F: Future>(&self, future: F) -> RunUntilCancelled<'_, F> {
        RunUntilCancelled {
            cancelled: self.cancelled(),
            future,
        }
    }

    /// A guard that cancels the token (with reason `"dropped"`) when dropped, unless
    /// [`disarm`](DropGuard::disarm)ed.
    pub fn drop_guard(self) -> DropGuard {
        DropGuard { token: Some(self) }
    }
}

/// The future of [`CancellationToken::cancelled`].
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled<'a> {
    waiter: Waiter<&'a CancellationToken>,
}

/// The future of [`CancellationToken::cancelled_owned`]: holds its own token, so it is
/// `'static` (and never trips rustc's `Send` check through a borrowed token).
#[must_use = "futures do nothing unless polled"]
pub struct CancelledOwned {
    waiter: Waiter<CancellationToken>,
}

impl fmt::Debug for Cancelled<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled")
            .field("token", self.waiter.token)
            .finish()
    }
}

impl fmt::Debug for CancelledOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelledOwned")
            .field("token", &self.waiter.token)
            .finish()
    }
}

impl Future for Cancelled<'_> {
    type Output = Reason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reason> {
        self.waiter.poll(cx)
    }
}

impl Future for CancelledOwned {
    type Output = Reason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reason> {
        self.waiter.poll(cx)
    }
}

/// A registration in a token's waiter list, through a borrowed or an owned token.
struct Waiter<T: Borrow<CancellationToken>> {
    token: T,
    slot: Option<usize>,
}

impl<T: Borrow<CancellationToken>> Waiter<T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Reason> {
        let node = &self.token.borrow().node;
        let mut state = node.state();
        if let Some(reason) = &state.reason {
            return Poll::Ready(reason.clone());
        }
        state.waiters.register(&mut self.slot, cx.waker());
        Poll::Pending
    }
}

impl<T: Borrow<CancellationToken>> Drop for Waiter<T> {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.token
                .borrow()
                .node
                .state()
                .waiters
                .free(&mut self.slot);
        }
    }
}

pin_project! {
    /// The future of [`CancellationToken::run_until_cancelled`]: `Ok(output)`, or
    /// `Err(reason)` if the token was cancelled first.
    #[must_use = "futures do nothing unless polled"]
    pub struct RunUntilCancelled<'a, F> {
        cancelled: Cancelled<'a>,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for RunUntilCancelled<'_, F> {
    type Output = Result<F::Output, Reason>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Checked before every poll of the inner future, not only when it is pending.
        if let Poll::Ready(reason) = Pin::new(this.cancelled).poll(cx) {
            return Poll::Ready(Err(reason));
        }
        this.future.poll(cx).map(Ok)
    }
}

/// Cancels its token on drop; see [`CancellationToken::drop_guard`].
#[derive(Debug)]
#[must_use = "the token is cancelled as soon as the guard is dropped"]
pub struct DropGuard {
    token: Option<CancellationToken>,
}

impl DropGuard {
    /// Gives the token back without cancelling it.
    pub fn disarm(mut self) -> CancellationToken {
        self.token.take().unwrap_or_default()
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            token.cancel("dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Far less stack than the chains below would need at one frame per token.
    const SMALL_STACK: usize = 128 << 10;
    const DEPTH: usize = 200_000;

    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    /// The root, the leaf `depth` children below it, and nothing held in between.
    fn chain(depth: usize) -> (CancellationToken, CancellationToken) {
        let root = CancellationToken::new();
        let mut leaf = root.child();
        for _ in 1..depth {
            leaf = leaf.child();
        }
        (root, leaf)
    }

    #[test]
    fn cancel_walks_a_chain_of_any_depth_without_recursing() {
        on_small_stack(|| {
            let (root, leaf) = chain(DEPTH);
            root.node.cancel(&Reason::new("deep"));
            assert!(leaf.node.cancelled.load(Ordering::Acquire));
            assert_eq!(leaf.node.state().reason, Some(Reason::new("deep")));
            assert!(root.node.state().children.is_empty(), "handed on, not kept");
        });
    }

    #[test]
    fn dropping_the_last_token_of_a_chain_releases_it_without_recursing() {
        on_small_stack(|| {
            let (root, leaf) = chain(DEPTH);
            drop(leaf);
            // Every node in between is gone: the root is held by its token alone.
            assert_eq!(Arc::strong_count(&root.node), 1);
            let (root, leaf) = chain(DEPTH);
            drop(root);
            drop(leaf);
        });
    }

    #[test]
    fn the_release_stops_at_an_ancestor_still_held() {
        let root = CancellationToken::new();
        let held = root.child();
        let leaf = held.child().child();
        drop(leaf);
        // `held` keeps its node (and so the link to the root); only the two below went.
        assert_eq!(Arc::strong_count(&held.node), 1);
        assert!(held.has_parent());
        assert_eq!(Arc::strong_count(&root.node), 2);
        root.cancel("still linked");
        assert_eq!(held.reason(), Some(Reason::new("still linked")));
    }
}
