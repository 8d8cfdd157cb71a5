//! The viewer's state and what each action does to it. No drawing and no
//! terminal here: tests drive an [`App`] with actions and render it.
//!
//! Screens stack up as the user follows a trail (list → a request's tokens →
//! the concurrency around one → the culprit's tokens …); Back pops one.

use super::concurrency::{self, StepWindow};
use super::detok::Detokenizer;
use super::keys::{Action, Mode};
use super::requests::RequestList;
use super::tokens::{self, RequestView};
use std::collections::HashSet;
use toktrace_analyzer::data::{RequestIx, StepIx};
use toktrace_analyzer::open::DetailLoader;
use toktrace_analyzer::Analysis;

/// The concurrency view's state.
pub struct Concurrency {
    /// Steps and the cursor.
    pub window: StepWindow,
    /// The request it was opened from (highlighted).
    pub request: Option<RequestIx>,
    /// That token's culprits (marked as such).
    pub culprits: Vec<RequestIx>,
    /// The index of the token it was opened on.
    pub token_index: Option<u32>,
}

/// One screen on the stack.
pub enum Screen {
    /// The requests list (always at the bottom).
    Requests,
    /// One request's tokens.
    Tokens(RequestView),
    /// Steps around one moment.
    Concurrency(Concurrency),
}

/// Everything the viewer knows.
pub struct App {
    /// The trace, analysed.
    pub analysis: Analysis,
    /// Token text.
    pub detok: Detokenizer,
    loader: Box<dyn DetailLoader>,
    /// Requests whose detail was already fetched (or found missing).
    fetched: HashSet<RequestIx>,
    /// The requests list's state (kept while other screens are open).
    pub list: RequestList,
    /// Screens, the shown one last; never empty.
    pub stack: Vec<Screen>,
    /// The help overlay is up.
    pub help: bool,
    /// Keys edit the list's filter.
    pub mode: Mode,
    /// One line of feedback ("no slow token after this one", load errors).
    pub status: String,
    /// Rows of the list on screen, set by the drawing (for page moves).
    pub page: usize,
    /// Leave the loop.
    pub quit: bool,
    /// When only a window of the trace is loaded: what it is (for the title).
    pub window: Option<String>,
}

impl App {
    /// A viewer on the requests list.
    pub fn new(analysis: Analysis, detok: Detokenizer, loader: Box<dyn DetailLoader>) -> App {
        let list = RequestList::new(&analysis);
        App {
            analysis,
            detok,
            loader,
            fetched: HashSet::new(),
            list,
            stack: vec![Screen::Requests],
            help: false,
            mode: Mode::Normal,
            status: String::new(),
            page: 10,
            quit: false,
            window: None,
        }
    }

    /// The screen shown.
    pub fn screen(&self) -> &Screen {
        // `stack` is never empty: Back stops at the list.
        self.stack.last().unwrap_or(&Screen::Requests)
    }

    /// Open request `r`'s tokens on top of the stack, fetching its detail
    /// the first time; the slowest token is selected.
    pub fn open_request(&mut self, r: RequestIx) {
        if r as usize >= self.analysis.data.requests.len() {
            return;
        }
        self.list.select(r);
        let mut note = None;
        if self.fetched.insert(r) && self.analysis.data.requests[r as usize].detail.is_none() {
            match self.loader.load(&self.analysis.data, r) {
                Ok(detail) => self.analysis.data.requests[r as usize].detail = detail,
                Err(e) => {
                    // Try again next time it is opened.
                    self.fetched.remove(&r);
                    note = Some(format!(
                        "token detail not loaded: {:#}",
                        anyhow::Error::new(e)
                    ));
                }
            }
        }
        let req = &self.analysis.data.requests[r as usize];
        let mut view = RequestView::new(&self.analysis, r, req.detail.as_ref(), &self.detok);
        view.jump_slowest();
        view.detail_note = note;
        self.status = match &view.detail_note {
            Some(n) => n.clone(),
            None => String::new(),
        };
        self.stack.push(Screen::Tokens(view));
    }

    /// Apply one action.
    pub fn apply(&mut self, action: Action) {
        match action {
            Action::Quit => {
                self.quit = true;
                return;
            }
            Action::Help => {
                self.help = !self.help;
                return;
            }
            _ if self.help => {
                // Any other key closes the help first.
                self.help = false;
                return;
            }
            Action::Back => {
                if self.stack.len() > 1 {
                    self.stack.pop();
                }
                self.status.clear();
                return;
            }
            _ => {}
        }
        let page = self.page.max(1) as isize;
        match self.stack.last() {
            Some(Screen::Tokens(_)) => self.on_tokens(action, page),
            Some(Screen::Concurrency(_)) => self.on_concurrency(action, page),
            _ => self.on_requests(action, page),
        }
    }

    fn on_requests(&mut self, action: Action, page: isize) {
        let list = &mut self.list;
        match action {
            Action::Up => list.move_by(-1),
            Action::Down => list.move_by(1),
            Action::PageUp => list.move_by(-page),
            Action::PageDown => list.move_by(page),
            Action::Top => list.selected = 0,
            Action::Bottom => list.move_by(isize::MAX),
            Action::Sort => {
                list.sort = list.sort.next();
                list.refresh();
            }
            Action::Reverse => {
                list.worst_first = !list.worst_first;
                list.refresh();
            }
            Action::Interfered => {
                list.only_interfered = !list.only_interfered;
                list.refresh();
            }
            Action::Filter => self.mode = Mode::Typing,
            Action::Type(c) => {
                list.filter.push(c);
                list.refresh();
            }
            Action::Erase => {
                list.filter.pop();
                list.refresh();
            }
            Action::Done => self.mode = Mode::Normal,
            Action::Cancel => {
                self.mode = Mode::Normal;
                list.filter.clear();
                list.refresh();
            }
            Action::Open => {
                if let Some(r) = list.selected_request() {
                    self.open_request(r);
                }
            }
            _ => {}
        }
    }

    fn on_tokens(&mut self, action: Action, page: isize) {
        let Some(Screen::Tokens(view)) = self.stack.last_mut() else {
            return;
        };
        self.status.clear();
        match action {
            Action::Up => view.move_by(-1),
            Action::Down => view.move_by(1),
            Action::PageUp => view.move_by(-page),
            Action::PageDown => view.move_by(page),
            Action::Top => view.selected = 0,
            Action::Bottom => view.move_by(isize::MAX),
            Action::NextSlow | Action::PrevSlow => {
                let moved = view.jump_slow(action == Action::NextSlow);
                if !moved {
                    self.status = "no slow token that way".into();
                }
            }
            Action::Slowest => {
                let moved = view.jump_slowest();
                if !moved {
                    self.status = "no token of this request was late".into();
                }
            }
            Action::Culprit => {
                let Some(t) = view.current() else { return };
                let found = tokens::culprits(&self.analysis, view.request, &t.timing);
                match found.first() {
                    Some(c) => {
                        let (culprit, step) = (c.request, t.timing.step);
                        self.open_request(culprit);
                        if let Some(Screen::Tokens(v)) = self.stack.last_mut() {
                            v.select_step(step);
                        }
                    }
                    None => self.status = "no other request delayed this token".into(),
                }
            }
            Action::Concurrency => self.open_concurrency(),
            _ => {}
        }
    }

    /// The concurrency view around the selected token (or the request's
    /// first step when it has no tokens).
    fn open_concurrency(&mut self) {
        let Some(Screen::Tokens(view)) = self.stack.last() else {
            return;
        };
        let r = view.request;
        let (step, token_index, culprits): (Option<StepIx>, _, _) = match view.current() {
            Some(t) => (
                Some(t.timing.step),
                Some(t.timing.index),
                tokens::culprits(&self.analysis, r, &t.timing)
                    .iter()
                    .map(|c| c.request)
                    .collect(),
            ),
            None => (
                self.analysis.data.requests[r as usize].first_scheduled,
                None,
                Vec::new(),
            ),
        };
        let window = step.and_then(|s| StepWindow::around(&self.analysis.data, s));
        match window {
            Some(window) => self.stack.push(Screen::Concurrency(Concurrency {
                window,
                request: Some(r),
                culprits,
                token_index,
            })),
            None => self.status = "this request never ran in a step".into(),
        }
    }

    fn on_concurrency(&mut self, action: Action, page: isize) {
        let Some(Screen::Concurrency(c)) = self.stack.last_mut() else {
            return;
        };
        let w = &mut c.window;
        match action {
            Action::Up => w.move_by(-1),
            Action::Down => w.move_by(1),
            Action::PageUp => w.move_by(-(page as i64)),
            Action::PageDown => w.move_by(page as i64),
            Action::Top => w.move_by(i64::MIN / 2),
            Action::Bottom => w.move_by(i64::MAX / 2),
            Action::Left => w.member = w.member.saturating_sub(1),
            Action::Right => {
                let step = w.cursor;
                let n = concurrency::lines(&self.analysis.data, step..step + 1, c.request)
                    .first()
                    .map_or(0, |l| l.members.len());
                w.member = (w.member + 1).min(n.saturating_sub(1));
            }
            Action::Concurrency => {
                self.stack.pop();
            }
            Action::Open => {
                let step = w.cursor;
                let members = concurrency::lines(&self.analysis.data, step..step + 1, c.request);
                let chosen = members
                    .first()
                    .and_then(|l| {
                        l.members
                            .get(w.member.min(l.members.len().saturating_sub(1)))
                    })
                    .map(|m| m.request);
                match chosen {
                    Some(r) => {
                        self.open_request(r);
                        if let Some(Screen::Tokens(v)) = self.stack.last_mut() {
                            v.select_step(step);
                        }
                    }
                    None => self.status = "no request in this step".into(),
                }
            }
            _ => {}
        }
    }
}
