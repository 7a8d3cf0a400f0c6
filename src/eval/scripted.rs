//! A scorer driven by closures, recording every request: lets the harness be tested (and dry-run
//! from the CLI) without a model.

use super::{ChoiceScore, LmScorer};
use anyhow::Result;

type ScoreFn = Box<dyn FnMut(&str, &str) -> f64>;
type GenFn = Box<dyn FnMut(&str) -> String>;

pub struct ScriptedScorer {
    /// (context, continuation) → summed log-probability.
    pub score: ScoreFn,
    /// prompt → generated text.
    pub generate: GenFn,
    /// Every `score_choices` call: the context and its continuations.
    pub scored: Vec<(String, Vec<String>)>,
    /// Every `generate_until` call: the prompt, `max_new` and the stop strings.
    pub generated: Vec<(String, usize, Vec<String>)>,
}

impl ScriptedScorer {
    pub fn new(
        score: impl FnMut(&str, &str) -> f64 + 'static,
        generate: impl FnMut(&str) -> String + 'static,
    ) -> Self {
        ScriptedScorer {
            score: Box::new(score),
            generate: Box::new(generate),
            scored: Vec::new(),
            generated: Vec::new(),
        }
    }
}

impl LmScorer for ScriptedScorer {
    fn score_choices(
        &mut self,
        context: &str,
        continuations: &[String],
    ) -> Result<Vec<ChoiceScore>> {
        self.scored
            .push((context.to_string(), continuations.to_vec()));
        Ok(continuations
            .iter()
            .map(|c| ChoiceScore {
                logprob: (self.score)(context, c),
                greedy: false,
                n_tokens: c.split_whitespace().count(),
            })
            .collect())
    }

    fn generate_until(&mut self, prompt: &str, max_new: usize, stops: &[String]) -> Result<String> {
        self.generated
            .push((prompt.to_string(), max_new, stops.to_vec()));
        Ok((self.generate)(prompt))
    }
}
