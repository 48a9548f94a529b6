//! The fields an action's form posts, and which dead letters they select.

use std::collections::BTreeSet;

use crate::dlq::Filter;

/// An action's form, as posted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ActionForm {
    /// The page's form token.
    pub(super) csrf: Option<String>,
    /// The shelf acted on (`queue:<name>` or `orphans`).
    pub(super) shelf: Option<String>,
    /// `selected` or `matching`, from the bulk buttons.
    scope: Option<String>,
    /// The one dead letter of a row's button.
    one: Option<String>,
    /// The ticked dead letters.
    ids: Vec<String>,
    /// The list's task filter.
    pub(super) task: String,
    /// The list's reason filter.
    pub(super) reason: String,
    /// Whether this is the confirmation's post.
    pub(super) confirmed: bool,
}

/// Which dead letters an action takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// These, by task id.
    Ids(BTreeSet<String>),
    /// Every one matching the list's filter.
    Matching {
        task: Option<String>,
        reason: Option<String>,
    },
}

impl ActionForm {
    /// Reads an `application/x-www-form-urlencoded` body; unknown fields are
    /// ignored.
    pub(super) fn parse(body: &[u8]) -> ActionForm {
        let mut form = ActionForm::default();
        for (name, value) in form_urlencoded::parse(body) {
            let value = value.into_owned();
            match name.as_ref() {
                "csrf" => form.csrf = Some(value),
                "shelf" => form.shelf = Some(value),
                "scope" => form.scope = Some(value),
                "one" => form.one = Some(value),
                "ids" => form.ids.push(value),
                "task" => form.task = value,
                "reason" => form.reason = value,
                "confirmed" => form.confirmed = value == "yes",
                _ => {}
            }
        }
        form
    }

    /// The dead letters this form selects; `None` if it selects none (the
    /// "selected" button with nothing ticked).
    pub(super) fn scope(&self) -> Option<Scope> {
        if let Some(one) = self.one.as_ref().filter(|id| !id.is_empty()) {
            return Some(Scope::Ids([one.clone()].into()));
        }
        let ticked: BTreeSet<String> = self
            .ids
            .iter()
            .filter(|id| !id.is_empty())
            .cloned()
            .collect();
        match self.scope.as_deref() {
            Some("matching") => Some(Scope::Matching {
                task: non_empty(&self.task),
                reason: non_empty(&self.reason),
            }),
            _ if ticked.is_empty() => None,
            _ => Some(Scope::Ids(ticked)),
        }
    }

    /// The fields the confirmation posts again: the same selection, spelt
    /// out, with the token and the list's filter.
    pub(super) fn fields_to_confirm(&self, scope: &Scope) -> Vec<(String, String)> {
        let mut fields = vec![
            ("csrf".to_owned(), self.csrf.clone().unwrap_or_default()),
            ("shelf".to_owned(), self.shelf.clone().unwrap_or_default()),
            ("task".to_owned(), self.task.clone()),
            ("reason".to_owned(), self.reason.clone()),
        ];
        match scope {
            Scope::Ids(ids) => {
                fields.push(("scope".to_owned(), "selected".to_owned()));
                fields.extend(ids.iter().map(|id| ("ids".to_owned(), id.clone())));
            }
            Scope::Matching { .. } => fields.push(("scope".to_owned(), "matching".to_owned())),
        }
        fields
    }
}

impl Scope {
    /// The filter that takes these dead letters.
    pub(super) fn filter(&self) -> Filter {
        match self {
            Scope::Ids(ids) => Filter::ids(ids.iter().cloned()),
            Scope::Matching { task, reason } => Filter::all()
                .and_task(task.clone())
                .and_reason(reason.clone()),
        }
    }

    /// The selection in words, for the log.
    pub(super) fn describe(&self) -> String {
        match self {
            Scope::Ids(ids) => format!("ids {}", ids.iter().cloned().collect::<Vec<_>>().join(",")),
            Scope::Matching { task, reason } => format!(
                "all matching task={} reason={}",
                task.as_deref().unwrap_or("*"),
                reason.as_deref().unwrap_or("*")
            ),
        }
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_button_takes_its_one_dead_letter_whatever_is_ticked() {
        let form = ActionForm::parse(b"csrf=t&ids=a&ids=b&one=c");
        assert_eq!(form.scope(), Some(Scope::Ids(["c".to_owned()].into())));
    }

    #[test]
    fn the_selected_button_takes_the_ticked_ones() {
        let form = ActionForm::parse(b"scope=selected&ids=a&ids=b&ids=a");
        assert_eq!(
            form.scope(),
            Some(Scope::Ids(["a".to_owned(), "b".to_owned()].into()))
        );
        assert_eq!(ActionForm::parse(b"scope=selected").scope(), None);
    }

    #[test]
    fn the_matching_button_takes_the_list_filter() {
        let form = ActionForm::parse(b"scope=matching&task=proj.boom&reason=");
        let scope = form.scope().unwrap();
        assert_eq!(
            scope,
            Scope::Matching {
                task: Some("proj.boom".into()),
                reason: None
            }
        );
        assert_eq!(scope.filter(), Filter::task("proj.boom"));
    }

    #[test]
    fn a_confirmation_posts_the_same_selection_again() {
        let form = ActionForm::parse(b"csrf=t&shelf=queue%3Aq&scope=selected&ids=a&ids=b");
        let scope = form.scope().unwrap();
        let fields = form.fields_to_confirm(&scope);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                fields
                    .iter()
                    .chain(&[("confirmed".to_owned(), "yes".to_owned())]),
            )
            .finish();
        let again = ActionForm::parse(body.as_bytes());
        assert!(again.confirmed);
        assert_eq!(again.scope(), Some(scope));
        assert_eq!(again.shelf.as_deref(), Some("queue:q"));
        assert_eq!(again.csrf.as_deref(), Some("t"));
    }
}
