//! `Stored<E>`: a domain enum in an entity column, kept as its name (TEXT on
//! both backends, as the migrations created it). Reading a row yields the
//! typed value; a name no variant has (a newer schema, or corruption) fails
//! the read as a type error instead of being parsed at every call site.

use std::ops::Deref;

use cascade_domain::NamedValue;
use sea_orm::sea_query::{ArrayType, ColumnType, Nullable, StringLen, ValueType, ValueTypeErr};
use sea_orm::{ColIdx, DbErr, QueryResult, TryGetError, TryGetable, Value};

/// A domain enum as an entity field: `pub stage: Stored<AccountStage>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<E>(pub E);

impl<E> Deref for Stored<E> {
    type Target = E;

    fn deref(&self) -> &E {
        &self.0
    }
}

impl<E: NamedValue> From<E> for Stored<E> {
    fn from(value: E) -> Self {
        Stored(value)
    }
}

impl<E: NamedValue> From<Stored<E>> for Value {
    fn from(value: Stored<E>) -> Self {
        Value::String(Some(value.0.name().to_owned()))
    }
}

impl<E: NamedValue> TryGetable for Stored<E> {
    fn try_get_by<I: ColIdx>(res: &QueryResult, index: I) -> Result<Self, TryGetError> {
        let text = String::try_get_by(res, index)?;
        text.parse().map(Stored).map_err(|e| {
            TryGetError::DbErr(DbErr::Type(format!(
                "{} column: {e}",
                std::any::type_name::<E>()
            )))
        })
    }
}

impl<E: NamedValue> ValueType for Stored<E> {
    fn try_from(value: Value) -> Result<Self, ValueTypeErr> {
        let text = <String as ValueType>::try_from(value)?;
        text.parse().map(Stored).map_err(|_| ValueTypeErr)
    }

    fn type_name() -> String {
        std::any::type_name::<E>().to_owned()
    }

    fn array_type() -> ArrayType {
        ArrayType::String
    }

    fn column_type() -> ColumnType {
        ColumnType::String(StringLen::None)
    }
}

impl<E: NamedValue> Nullable for Stored<E> {
    fn null() -> Value {
        Value::String(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_domain::AccountStage;

    #[test]
    fn a_stored_enum_round_trips_through_its_name() {
        let value: Value = Stored(AccountStage::Prioritized).into();
        assert_eq!(value, Value::String(Some("PRIORITIZED".to_owned())));
        let back = <Stored<AccountStage> as ValueType>::try_from(value);
        assert_eq!(back.ok(), Some(Stored(AccountStage::Prioritized)));
        let unknown = Value::String(Some("SOMEWHERE".to_owned()));
        assert!(<Stored<AccountStage> as ValueType>::try_from(unknown).is_err());
    }
}
