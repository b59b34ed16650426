//! [`super::super::AdminTokenStore`] on sea-orm. Admin tokens (digests only).
use super::*;

#[async_trait::async_trait]
impl AdminTokenStore for SeaStore {
    async fn add_admin_token(&self, t: &AdminTokenRecord) -> Result<()> {
        let row = admin_tokens::ActiveModel {
            id: Set(t.id.clone()),
            token_digest: Set(hex(&t.digest)),
            description: Set(t.description.clone()),
            create_time: Set(t.create_time.0),
            role: Set(t.role.as_str().to_owned()),
            tenant_id: Set(t.tenant_id.clone()),
            revoke_time: Set(None),
        };
        admin_tokens::Entity::insert(row)
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>> {
        use admin_tokens::Column as C;
        let rows = admin_tokens::Entity::find()
            .order_by_asc(C::CreateTime)
            .order_by_asc(C::Id)
            .all(&self.db)
            .await
            .map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                let digest = unhex(&r.token_digest)
                    .ok_or_else(|| Error::internal("stored admin token digest"))?;
                let role = Role::parse("role", &r.role)
                    .map_err(|_| Error::internal("stored admin token role"))?;
                Ok(AdminTokenRecord {
                    id: r.id,
                    digest,
                    description: r.description,
                    role,
                    tenant_id: r.tenant_id,
                    create_time: UnixMillis(r.create_time),
                    revoke_time: r.revoke_time.map(UnixMillis),
                })
            })
            .collect()
    }

    async fn revoke_admin_token(&self, id: &str, now: UnixMillis) -> Result<bool> {
        use admin_tokens::Column as C;
        let res = admin_tokens::Entity::update_many()
            .col_expr(C::RevokeTime, Expr::value(now.0))
            .filter(C::Id.eq(id))
            .filter(C::RevokeTime.is_null())
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected == 1)
    }
}
